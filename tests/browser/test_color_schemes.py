"""The demo and the emulator's pages in the light and the dark colour scheme: the browser's preference is
followed, and every piece of text on each screen keeps a readable contrast with what is behind it."""

from __future__ import annotations

import dataclasses
import typing as t

import pytest
from playwright.sync_api import Browser, BrowserContext, Error, Page, expect

from bff.emulator.state import LOGIN_TRANSACTION_LIFETIME
from tests.browser.spa import EMAIL, Screenshots, Spa

pytestmark = pytest.mark.browser

SCHEMES = ["light", "dark"]

#: Every visible piece of text on the page (in its modal dialog, if one is open): the WCAG 2 contrast
#: between the colour it is drawn in and the colour behind it (the backgrounds of its ancestors composited
#: over the canvas), and the contrast it needs; and the luminance of the body's background and text.
_TEXTS = """() => {
    const parse = (value) => {
        let match = value.match(/^rgba?\\(([^)]+)\\)$/);
        let scale = 1;
        if (!match) { match = value.match(/^color\\(srgb ([^)]+)\\)$/); scale = 255; }
        if (!match) return null;
        const parts = match[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
        return [parts[0] * scale, parts[1] * scale, parts[2] * scale, parts.length > 3 ? parts[3] : 1];
    };
    const over = (top, bottom) => [0, 1, 2].map((i) => top[i] * top[3] + bottom[i] * (1 - top[3])).concat(1);
    const dark = getComputedStyle(document.documentElement).colorScheme.includes('dark')
        && matchMedia('(prefers-color-scheme: dark)').matches;
    const canvas = dark ? [18, 18, 18, 1] : [255, 255, 255, 1];
    const behind = (element) => {
        const layers = [];
        for (let node = element; node; node = node.parentElement) {
            layers.unshift(getComputedStyle(node).backgroundColor);
        }
        return layers.reduce((below, layer) => {
            const colour = parse(layer);
            return colour && colour[3] > 0 ? over(colour, below) : below;
        }, canvas);
    };
    const luminance = (rgb) => {
        const [r, g, b] = rgb.slice(0, 3).map((v) => {
            const c = v / 255;
            return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
        });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const contrast = (a, b) => {
        const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
        return (hi + 0.05) / (lo + 0.05);
    };
    const texts = [];
    // Behind an open modal dialog the page is inert (and dimmed): the dialog is what is read.
    const root = document.querySelector('dialog:modal') || document.body;
    for (const element of root.querySelectorAll('*')) {
        const own = [...element.childNodes].some((node) => node.nodeType === 3 && node.textContent.trim());
        const field = element.matches('input:not([type=checkbox]):not([type=hidden]), select');
        if (!own && !field) continue;
        if (element.closest('[disabled], .visually-hidden, option, script, style')) continue;
        const box = element.getBoundingClientRect();
        const shown = element.checkVisibility({ opacityProperty: true, visibilityProperty: true });
        if (!box.width || !box.height || !shown) continue;
        const style = getComputedStyle(element);
        const background = behind(element);
        const colour = over(parse(style.color), background);
        const size = parseFloat(style.fontSize);
        const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
        texts.push({
            text: (element.matches('input, select') ? element.value : element.textContent).trim().slice(0, 40),
            tag: element.tagName.toLowerCase() + (element.className ? `.${element.className}` : ''),
            ratio: Math.round(contrast(colour, background) * 100) / 100,
            required: large ? 3 : 4.5,
        });
    }
    const body = getComputedStyle(document.body);
    return {
        texts,
        background: luminance(behind(document.body)),
        text: luminance(over(parse(body.color), behind(document.body))),
    };
}"""


class Readable(t.TypedDict):
    texts: list[dict[str, t.Any]]
    background: float
    text: float


@pytest.fixture(params=SCHEMES)
def scheme(request: pytest.FixtureRequest) -> str:
    return t.cast(str, request.param)


@pytest.fixture
def context(chromium: Browser, scheme: str) -> t.Iterator[BrowserContext]:
    """The tests' browser context, preferring ``scheme``."""
    context = chromium.new_context(
        viewport={"width": 1280, "height": 900}, locale="en-US", timezone_id="UTC",
        color_scheme=t.cast(t.Literal["light", "dark"], scheme),
    )
    context.set_default_timeout(10_000)  # as the shared context fixture's
    yield context
    context.close()


def measure(page: Page) -> Readable:
    try:
        return t.cast(Readable, page.evaluate(_TEXTS))
    except Error as error:  # the inbox reloads itself every few seconds; measure the new page then
        if "context was destroyed" not in str(error):
            raise
        page.wait_for_load_state()
        return t.cast(Readable, page.evaluate(_TEXTS))


def check_readable(page: Page, scheme: str, screenshots: Screenshots, name: str, *, follows: bool = True) -> None:
    """Screenshot the screen; every text on it has WCAG AA contrast; a page that ``follows`` the
    preference is dark (light text on a dark background) in the dark scheme, and light in the light one."""
    screenshots.take(f"{name}-{scheme}")
    found = measure(page)
    assert found["texts"], f"{name}: no text measured"
    poor = [text for text in found["texts"] if text["ratio"] < text["required"]]
    assert not poor, f"{name} ({scheme}): text with too little contrast: {poor}"
    if follows and scheme == "dark":
        assert found["background"] < 0.05 and found["text"] > 0.6, f"{name} is not dark: {found}"
    else:
        assert found["background"] > 0.6 and found["text"] < 0.05, f"{name} is not light: {found}"


@pytest.mark.confirm_dialogs
def test_the_demo_is_readable_in_the_colour_scheme_the_browser_prefers(
    spa: Spa, scheme: str, screenshots: Screenshots
) -> None:
    page = spa.page
    spa.open()
    spa.testid("login").click()
    spa.expect_login_form()
    page.get_by_role("button", name="Deny").click()
    expect(spa.testid("error")).to_contain_text("The login was cancelled.")
    check_readable(page, scheme, screenshots, "signed-out-with-error")

    spa.testid("login").click()
    spa.submit_login_form()
    spa.expect_signed_in()
    page.locator(".claims summary").click()
    expect(spa.testid("claims")).to_be_visible()
    spa.testid("enroll-totp").click()
    expect(spa.testid("totp-secret")).not_to_be_empty()
    spa.testid("connections").locator('[data-connection="google-oauth2"] summary').click()
    check_readable(page, scheme, screenshots, "signed-in")

    spa.methods("password").get_by_test_id("delete").click()
    expect(spa.testid("confirm-dialog")).to_be_visible()
    check_readable(page, scheme, screenshots, "confirm-dialog")
    spa.testid("confirm-cancel").click()

    spa.testid("connect-google-oauth2").click()
    page.get_by_role("button", name="Allow").click()
    spa.expect_notice("google-oauth2 is now connected.")
    expect(spa.accounts("google-oauth2").get_by_test_id("account-scopes")).to_be_visible()
    check_readable(page, scheme, screenshots, "connected-with-notice")


def test_the_emulators_pages_are_readable_in_the_colour_scheme_the_browser_prefers(
    spa: Spa, scheme: str, screenshots: Screenshots
) -> None:
    page, idp = spa.page, spa.stack.idp
    idp.config = dataclasses.replace(idp.config, show_demo_credentials=True)
    spa.open()
    spa.testid("login").click()
    spa.expect_login_form()
    page.get_by_label("Email address").fill("")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_test_id("email-missing")).to_be_visible()
    check_readable(page, scheme, screenshots, "emulator-login")

    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    check_readable(page, scheme, screenshots, "emulator-login-error")

    idp.clock.advance(LOGIN_TRANSACTION_LIFETIME + 1)
    spa.submit_login_form()
    expect(page.get_by_role("heading", name="Login expired")).to_be_visible()
    idp.clock.advance(-(LOGIN_TRANSACTION_LIFETIME + 1))  # tokens issued from now on are current again
    check_readable(page, scheme, screenshots, "emulator-login-expired")

    spa.open()
    spa.log_in()
    spa.testid("connect-google-oauth2").click()
    expect(page.locator("#scopes li").first).to_be_visible()
    check_readable(page, scheme, screenshots, "emulator-consent")

    page.goto(spa.issuer + "/connect?ticket=used-or-unknown")
    expect(page.get_by_role("heading", name="Cannot connect the account")).to_be_visible()
    check_readable(page, scheme, screenshots, "emulator-connect-error")

    idp.deliver_code("email", EMAIL, "123456")
    idp.deliver_code("sms", "+15551234567", "654321")
    page.goto(spa.issuer + "/inbox")
    expect(page.locator(".code")).to_have_count(2)
    check_readable(page, scheme, screenshots, "emulator-inbox")


def test_the_bffs_try_again_page_is_readable_in_either_scheme(
    spa: Spa, scheme: str, screenshots: Screenshots
) -> None:
    """The BFF's own page for a navigation with nowhere safe to return follows the scheme too."""
    spa.page.goto(spa.url + "/bff/login?returnTo=https://evil.example/")
    expect(spa.page.get_by_role("link", name="Try again")).to_be_visible()
    check_readable(spa.page, scheme, screenshots, "try-again-page")
