// Render an otpauth:// URI as an SVG QR code (built with DOM calls, no markup strings).
import qrcode from "./vendor/qrcode-generator.js";

const SVG = "http://www.w3.org/2000/svg";
const QUIET_ZONE = 4;

function svgElement(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

/**
 * Replace the content of `container` with a QR code for `text`.
 * @param {HTMLElement} container
 * @param {string} text
 * @param {string} label Accessible name of the image.
 */
export function renderQr(container, text, label) {
  const qr = qrcode(0, "M");
  qr.addData(text);
  qr.make();
  const count = qr.getModuleCount();
  const size = count + QUIET_ZONE * 2;
  let path = "";
  for (let row = 0; row < count; row++) {
    for (let col = 0; col < count; col++) {
      if (qr.isDark(row, col)) path += `M${col + QUIET_ZONE} ${row + QUIET_ZONE}h1v1h-1z`;
    }
  }
  const svg = svgElement("svg", { viewBox: `0 0 ${size} ${size}`, role: "img", "aria-label": label, "shape-rendering": "crispEdges" });
  svg.append(svgElement("rect", { width: size, height: size, fill: "#fff" }), svgElement("path", { d: path, fill: "#000" }));
  container.replaceChildren(svg);
}
