"""The browser client: the ``@bff/client`` package in ``clients/js``, and the copy the BFF serves at ``/bff/static/``.

Node runs the package's own tests (``node --test``) and TypeScript checks its declarations (``tsc``); the
dev dependencies come from the committed lock file (``npm ci``, see ``tests/browser/clientjs.py``).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import subprocess
import tomllib
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from bff.demo import demo_content_security_policy
from bff.proxy.matching import RouteMatch, RouteTable
from bff.proxy.spec import NEVER_EXPOSED, spec_routes
from bff.settings import variables
from bff.spa import SPA_CONTENT_SECURITY_POLICY
from tests.browser.clientjs import CLIENT_DIR, EXAMPLES, ensure_node_modules, node_json, run
from tests.conftest import Stack, StackFactory

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "bff" / "static"
PACKAGE = json.loads((CLIENT_DIR / "package.json").read_text())
SPEC = json.loads((ROOT / "bff" / "proxy" / "myaccount-api-oas.json").read_text())

#: One call per My Account operation the proxy can expose, by the spec's operationId.
WRAPPERS = {
    "getFactors": "myAccount.listFactors()",
    "getAuthenticationMethods": "myAccount.listAuthenticationMethods('totp')",
    "createAuthenticationMethod": "myAccount.enroll('email', {email: 'a@example.com'})",
    "getAuthenticationMethod": "myAccount.getAuthenticationMethod('totp|dev_1')",
    "deleteAuthenticationMethod": "myAccount.deleteAuthenticationMethod('phone|dev_2')",
    "updateAuthenticationMethod": "myAccount.updateAuthenticationMethod('phone|dev_2', {name: 'Work'})",
    "confirmAuthenticationMethod": "myAccount.verify('email|dev_3', {auth_session: 's', otp_code: '1'})",
    "getConnectedAccounts": "myAccount.listConnectedAccounts({connection: ['github', 'google-oauth2'], take: 5})",
    "getConnectedAccountsConnections": "myAccount.listConnections({from: 'abc', take: 5})",
    "deleteConnectedAccount": "myAccount.deleteConnectedAccount('cac_abc123')",
    "getConsents": "myAccount.listConsents()",
    "getConsent": "myAccount.getConsent('cns_abc123')",
    "getOrganizations": "myAccount.listOrganizations({from: 'abc', take: 5})",
}


@pytest.fixture(scope="module")
def node_modules() -> None:
    ensure_node_modules()


def _wrapper_calls(calls: dict[str, str]) -> dict[str, list[list[str]]]:
    """What each call expression fetched, as ``[method, path]`` pairs, with the client under Node."""
    table = ",\n".join(f"  {json.dumps(name)}: () => {expression}" for name, expression in calls.items())
    return t.cast(dict[str, list[list[str]]], node_json(f"""
import {{ json, load }} from "./test/harness.mjs";
const answer = () => json(200, {{ auth_session: "s" }}, {{ Location: "/me/v1/authentication-methods/x" }});
const {{ client: {{ myAccount }}, calls }} = await load(answer);
const wrappers = {{
{table}
}};
const seen = {{}};
for (const [name, call] of Object.entries(wrappers)) {{
  calls.length = 0;
  await call();
  seen[name] = calls.map((c) => [c.method, c.path]);
}}
console.log(JSON.stringify(seen));
"""))


# --- One source, two places ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bff.js", "bff.d.ts"])
def test_the_served_client_is_a_copy_of_the_package_source(name: str) -> None:
    assert (STATIC / name).read_bytes() == (CLIENT_DIR / "src" / name).read_bytes(), (
        f"bff/static/{name} differs from clients/js/src/{name}: edit the source, then run"
        " `npm run sync --prefix clients/js`"
    )


def test_the_package_exports_its_module_and_its_types_for_bundlers() -> None:
    assert PACKAGE["type"] == "module"
    assert PACKAGE["exports"]["."] == {"types": "./src/bff.d.ts", "default": "./src/bff.js"}
    assert PACKAGE["types"] == "./src/bff.d.ts"
    assert {"src/bff.js", "src/bff.d.ts", "README.md"} <= set(PACKAGE["files"])
    for name in PACKAGE["files"]:
        assert (CLIENT_DIR / name).is_file(), name


def test_the_package_version_is_the_bff_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert PACKAGE["version"] == project["version"]


def test_the_dev_dependencies_are_pinned_by_the_committed_lock_file_and_not_committed() -> None:
    lock = json.loads((CLIENT_DIR / "package-lock.json").read_text())
    assert lock["packages"][""]["devDependencies"] == PACKAGE["devDependencies"]
    for name, version in PACKAGE["devDependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned to one version: {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    ignored = subprocess.run(["git", "check-ignore", "-q", "clients/js/node_modules/x"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "clients/js/node_modules is not ignored by git"


def test_the_wheel_ships_the_served_files() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bff"]
    for name in ("bff.js", "bff.d.ts"):
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name


# --- The package's own checks ----------------------------------------------------------------------


def test_the_package_tests_pass_under_node_test(node_modules: None) -> None:
    files = sorted(str(path.relative_to(CLIENT_DIR)) for path in (CLIENT_DIR / "test").glob("*.test.mjs"))
    assert files
    completed = run("node", "--test", *files)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 30, output
    assert re.search(r"^# fail 0$", output, re.MULTILINE), output


def test_the_declarations_type_check_with_tsc(node_modules: None) -> None:
    completed = run(str(CLIENT_DIR / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json")
    assert completed.returncode == 0, completed.stdout + completed.stderr


# --- Wrappers for the whole spec -------------------------------------------------------------------


def test_every_spec_operation_has_a_wrapper_that_the_proxy_routes_to_it(node_modules: None) -> None:
    exposable = [route for route in spec_routes() if (route.method, route.template) not in NEVER_EXPOSED]
    assert set(WRAPPERS) == {route.operation_id for route in exposable}, "a spec operation has no wrapper listed"
    table = RouteTable(exposable)
    for operation, calls in _wrapper_calls(WRAPPERS).items():
        assert len(calls) == 1, (operation, calls)
        [[method, url]] = calls
        path, _, query = url.removeprefix("/me/v1").partition("?")
        assert url.startswith("/me/v1/"), url
        match = table.match(method, path, query)
        assert isinstance(match, RouteMatch), (operation, url, match)
        assert match.route.operation_id == operation, (operation, url)


def test_every_method_type_the_api_enrolls_has_an_enrollment_helper(node_modules: None) -> None:
    mapping = SPEC["components"]["schemas"]["CreateAuthenticationMethodRequestContent"]["discriminator"]["mapping"]
    expected = {"enroll" + "".join(word.title() for word in kind.split("-")) for kind in mapping}
    assert {"enrollTotp", "enrollEmail", "enrollPhone", "enrollRecoveryCode", "enrollPasskey"} <= expected
    names = node_json('import { myAccount } from "./src/bff.js"; console.log(JSON.stringify(Object.keys(myAccount)));')
    assert expected <= set(names), expected - set(names)


# --- Served: the stable name, the content-hashed name, the manifest --------------------------------


def _get(stack: Stack, path: str, **headers: str) -> TestResponse:
    """``GET path`` on the stack's app, read whole and closed (static files are streamed)."""
    with stack.app.test_client().get(path, headers=headers) as response:
        response.get_data()
    return t.cast(TestResponse, response)


def test_the_stable_client_url_is_revalidated_on_every_load(stack: Stack) -> None:
    response = _get(stack, "/bff/static/bff.js")
    assert response.status_code == 200
    assert response.data == (STATIC / "bff.js").read_bytes()
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.mimetype == "text/javascript"
    etag = response.headers["ETag"]
    assert _get(stack, "/bff/static/bff.js", **{"If-None-Match": etag}).status_code == 304


def test_the_content_hashed_url_from_the_manifest_serves_the_same_bytes_immutably(stack: Stack) -> None:
    manifest = _get(stack, "/bff/static/manifest.json")
    assert manifest.headers["Cache-Control"] == "no-cache"
    entry = manifest.get_json()["bff.js"]
    content = (STATIC / "bff.js").read_bytes()
    assert entry["url"] == f"/bff/static/bff.{hashlib.sha256(content).hexdigest()[:16]}.js"
    response = _get(stack, entry["url"])
    assert response.status_code == 200
    assert response.data == content
    assert response.mimetype == "text/javascript"
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert entry["integrity"] == "sha384-" + base64.b64encode(hashlib.sha384(response.data).digest()).decode()


def test_a_hash_that_is_not_the_installed_release_is_not_found(stack: Stack) -> None:
    response = _get(stack, "/bff/static/bff.0123456789abcdef.js")
    assert response.status_code == 404


def test_the_declarations_are_served_beside_the_client(stack: Stack) -> None:
    response = _get(stack, "/bff/static/bff.d.ts")
    assert response.status_code == 200
    assert response.data == (STATIC / "bff.d.ts").read_bytes()
    assert response.mimetype == "application/typescript"
    assert response.headers["Cache-Control"] == "no-cache"


# --- The SPA's Content-Security-Policy ---------------------------------------------------------------


def _directives(policy: str) -> dict[str, list[str]]:
    parts = [part.split() for part in policy.split(";") if part.strip()]
    return {part[0]: part[1:] for part in parts}


def test_the_default_policy_lets_https_avatars_load_and_nothing_else_from_elsewhere(make_stack: StackFactory) -> None:
    stack = make_stack(static_dir=str(EXAMPLES / "plain"))
    policy = _get(stack, "/").headers["Content-Security-Policy"]
    assert policy == SPA_CONTENT_SECURITY_POLICY
    directives = _directives(policy)
    assert directives["img-src"] == ["'self'", "data:", "https:"]
    for name in ("default-src", "script-src", "style-src", "connect-src"):
        assert directives[name] == ["'self'"], name


def test_bff_content_security_policy_replaces_the_default(make_stack: StackFactory) -> None:
    assert variables()["BFF_CONTENT_SECURITY_POLICY"].name == "content_security_policy"
    policy = "default-src 'self'; img-src 'self' https://cdn.example"
    stack = make_stack(static_dir=str(EXAMPLES / "plain"), content_security_policy=policy)
    assert _get(stack, "/").headers["Content-Security-Policy"] == policy
    assert _get(stack, "/app.js").headers["Content-Security-Policy"] == policy


def test_the_demo_policy_adds_the_emulator_origin_to_img_src_only() -> None:
    demo = _directives(demo_content_security_policy("http://127.0.0.1:4321/"))
    default = _directives(SPA_CONTENT_SECURITY_POLICY)
    assert demo["img-src"] == [*default["img-src"], "http://127.0.0.1:4321"]
    assert {k: v for k, v in demo.items() if k != "img-src"} == {k: v for k, v in default.items() if k != "img-src"}


def test_bff_demo_serves_its_spa_with_the_demo_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    import bff.app
    import bff.demo

    seen: list[t.Any] = []

    def create_app(settings: t.Any, **kwargs: t.Any) -> Flask:
        seen.append(settings)
        return Flask("never-served")  # the server below cannot listen

    def make_server(*args: t.Any, **kwargs: t.Any) -> t.NoReturn:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(bff.app, "create_app", create_app)
    monkeypatch.setattr(bff.demo, "make_server", make_server)
    with pytest.raises(SystemExit):
        bff.demo.run_demo(port=0)
    [settings] = seen
    issuer = settings.issuer_url.rstrip("/")
    assert settings.content_security_policy == demo_content_security_policy(issuer)
    assert issuer in _directives(settings.content_security_policy)["img-src"]


# --- The documents' examples -------------------------------------------------------------------------


def _block(text: str, name: str) -> str:
    start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
    assert text.count(start) == 1 and text.count(end) == 1, name
    return text.split(start, 1)[1].split(end, 1)[0]


def test_the_plain_example_in_the_docs_is_the_one_the_browser_test_runs() -> None:
    docs = (ROOT / "docs" / "client.md").read_text()
    assert _block(docs, "plain-example") == "```js\n" + (EXAMPLES / "plain" / "app.js").read_text() + "```"


def test_the_readme_client_example_is_a_valid_module(tmp_path: Path, node_modules: None) -> None:
    section = (ROOT / "README.md").read_text().split("### The browser client\n", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```js\n(.*?)```", section, re.DOTALL)
    assert "login(location.pathname + location.search)" in code
    module = tmp_path / "readme.mjs"
    module.write_text(code)
    completed = run("node", "--check", str(module))
    assert completed.returncode == 0, completed.stderr
