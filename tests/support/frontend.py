"""Drive ComfyUI's real frontend (comfyui-frontend-package) in headless Chromium.

The browser is the system's (Debian ``chromium``, found at ``$CHROMIUM_PATH``,
``/usr/bin/chromium`` or on ``PATH``), driven by Playwright for Python; Playwright's own
browser download is never used. The network is closed: Chromium is started without any
background networking, and the frontend's look-ups on ``api.comfy.org`` fail, which is not the
workflow's fault (see ``Frontend.console_errors``).

What the frontend exposes (read in the served JS of frontend 1.35, the one ComfyUI 0.8.0 pins):
``window.app`` (the ``ComfyApp``: ``loadGraphData(json, clean, restoreView, name)``,
``graphToPrompt()``, ``rootGraph``, ``extensionManager.command.execute(id)``) and
``window.LiteGraph`` (``registered_node_types``). A node whose type is not registered is loaded
as a placeholder with ``has_errors`` set, and the "This workflow has missing nodes" dialog
opens. A combo value that is not among the options is kept silently, so widgets are checked
here, from the graph as the frontend built it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: Headless, no GPU, no network side traffic, no first-run UI; the profile is a fresh temp dir.
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
#: Frontend settings for a fresh server user: no first-run template dialog, warnings on.
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Workflow.ShowMissingModelsWarning": True,
    "Comfy.Validation.Workflows": True,
}
APP_READY = "() => !!(window.app && window.app.rootGraph && window.LiteGraph)"

#: One entry per node of the loaded graph: type as registered, widgets as built, values as saved.
_GRAPH_REPORT = """() => app.rootGraph.nodes.map(n => ({
  id: n.id, type: n.type, title: n.title,
  registered: n.type in LiteGraph.registered_node_types,
  comfy_class: n.constructor?.comfyClass ?? null,
  has_errors: !!n.has_errors,
  widgets: (n.widgets || []).map(w => {
    const v = w.options?.values;
    return {name: w.name, type: w.type, value: w.value, min: w.options?.min ?? null,
            max: w.options?.max ?? null,
            values: Array.isArray(v) ? v : (typeof v === 'function' ? v(w, n) : null)};
  }),
  saved: n.serialize().widgets_values ?? [],
}))"""
_OPEN_DIALOGS = "() => [...document.querySelectorAll('.p-dialog')].map(d => d.innerText.slice(0, 500))"
_ERROR_TOASTS = """() => [...document.querySelectorAll('.p-toast-message-error, .p-toast-message-warn')]
  .map(t => t.innerText.slice(0, 500))"""


class BrowserUnavailable(RuntimeError):
    """Playwright or Chromium is missing or does not start; the message says which and how to fix."""


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_unavailable_reason() -> str | None:
    """Why the frontend tests cannot run here, or None when they can try."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright; `bash .ci/run` does it)"
    if find_chromium() is None:
        return ("no Chromium: install Debian's `chromium` (apt-get install chromium chromium-driver; "
                "`bash .ci/run` does it as root) or set CHROMIUM_PATH")
    return None


@dataclass
class Frontend:
    """One page of the ComfyUI frontend, with its console captured."""

    page: Any
    origin: str
    console: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, text, resource url)

    def _record(self, kind: str, text: str, url: str = "") -> None:
        self.console.append((kind, text, url))

    def wait_ready(self, timeout_s: float) -> None:
        self.page.wait_for_function(APP_READY, timeout=timeout_s * 1000)

    def reload(self, timeout_s: float) -> None:
        self.page.reload()
        self.wait_ready(timeout_s)

    def open_dialogs(self) -> list[str]:
        return self.page.evaluate(_OPEN_DIALOGS)

    def error_toasts(self) -> list[str]:
        return self.page.evaluate(_ERROR_TOASTS)

    def load_workflow(self, workflow: Mapping[str, Any], name: str, settle_ms: int = 1000) -> None:
        """``app.loadGraphData`` as the "Open" menu does; console and toasts start empty."""
        self.console.clear()
        self.page.evaluate("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name); }",
                           [dict(workflow), name])
        self.page.wait_for_timeout(settle_ms)  # image previews (/view) and dialogs arrive async

    def graph_report(self) -> list[dict[str, Any]]:
        return self.page.evaluate(_GRAPH_REPORT)

    def export_api(self) -> dict[str, Any]:
        """What "Export (API)" writes for the loaded graph (``app.graphToPrompt().output``)."""
        return self.page.evaluate("async () => (await app.graphToPrompt()).output")

    def console_errors(self) -> list[str]:
        """Errors logged since the last load, less failed fetches to other hosts (network closed)."""
        here = urlsplit(self.origin).netloc
        out = []
        for kind, text, url in self.console:
            if kind not in ("error", "pageerror"):
                continue
            if text.startswith("Failed to load resource") and url and urlsplit(url).netloc != here:
                continue
            out.append(f"{kind}: {text} {url}".rstrip())
        return out

    def search_nodes(self, query: str, settle_ms: int = 1500) -> list[str]:
        """Display names the node search box (double-click on the canvas) lists for ``query``."""
        self.page.locator("canvas#graph-canvas").dblclick(position={"x": 700, "y": 500})
        box = self.page.locator(".comfy-vue-node-search-container input").first
        box.wait_for(timeout=10_000)
        box.fill(query)
        self.page.wait_for_timeout(settle_ms)
        names = self.page.evaluate(
            "() => [...document.querySelectorAll('.p-autocomplete-option')].map(e => e.innerText.split('\\n')[0].trim())")
        self.page.keyboard.press("Escape")
        return names

    # The template browser ("Browse Templates"): custom-node templates under EXTENSIONS.
    def open_template_browser(self, timeout_s: float = 60) -> Any:
        self.page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        dialog = self.page.locator(".p-dialog")
        dialog.wait_for(timeout=timeout_s * 1000)
        return dialog

    def template_cards(self, category: str, timeout_s: float = 60) -> list[str]:
        """Template names the browser shows under the navigation entry ``category``."""
        dialog = self.open_template_browser(timeout_s)
        dialog.get_by_text(category, exact=True).first.click()
        cards = dialog.locator('[data-testid^="template-workflow-"]')
        cards.first.wait_for(timeout=timeout_s * 1000)
        ids = cards.evaluate_all("els => els.map(e => e.dataset.testid)")
        return [i.removeprefix("template-workflow-") for i in ids if i != "template-workflows-content"]

    def open_template(self, name: str, timeout_s: float = 60) -> None:
        """Click a template card (browser already open) and wait until its graph is loaded."""
        self.console.clear()
        self.page.locator(f'[data-testid="template-workflow-{name}"]').click()
        self.page.locator(".p-dialog").wait_for(state="detached", timeout=timeout_s * 1000)
        self.page.wait_for_function(
            "n => (app.extensionManager.workflow?.activeWorkflow?.path ?? '').endsWith(n + '.json')",
            arg=name, timeout=timeout_s * 1000,
        )


@contextlib.contextmanager
def open_frontend(url: str, timeout_s: float = 120) -> Iterator[Frontend]:
    """Headless Chromium on ``url`` until the block ends; raises ``BrowserUnavailable``."""
    reason = browser_unavailable_reason()
    if reason:
        raise BrowserUnavailable(reason)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=find_chromium(), args=list(CHROMIUM_ARGS), headless=True,
                viewport={"width": 1600, "height": 1000},
            )
        except PlaywrightError as exc:
            raise BrowserUnavailable(f"Chromium at {find_chromium()} did not start: {str(exc).splitlines()[0]}") from exc
        try:
            context.set_default_timeout(timeout_s * 1000)
            page = context.pages[0] if context.pages else context.new_page()
            frontend = Frontend(page, url)
            page.on("console", lambda m: frontend._record(m.type, m.text, m.location.get("url", "")))
            page.on("pageerror", lambda e: frontend._record("pageerror", str(e)))
            page.goto(url, timeout=timeout_s * 1000)
            frontend.wait_ready(timeout_s)
            yield frontend
        finally:
            context.close()


def graph_problems(report: list[dict[str, Any]], workflow: Mapping[str, Any]) -> list[str]:
    """Missing nodes and invalid widgets in the graph the frontend built from ``workflow``.

    * a node type the frontend does not know (not registered, placeholder with errors);
    * a combo value that is not among the options the server offered (model files, samplers...);
    * a number outside the widget's min/max;
    * saved ``widgets_values`` that differ from the file's: the frontend assigns the file's
      values to widgets by position, so a shifted or missing widget shows up here.
    """
    problems = []
    expected = {n["id"]: n for n in workflow["nodes"]}
    if sorted(expected) != sorted(n["id"] for n in report):
        problems.append(f"node ids {sorted(n['id'] for n in report)} != file's {sorted(expected)}")
    for node in report:
        where = f"node {node['id']} ({node['type']})"
        if not node["registered"] or node["has_errors"] or node["comfy_class"] != node["type"]:
            problems.append(f"{where}: node type unknown to the frontend (missing node)")
        problems += [f"{where} widget {w['name']}: {p}" for w in node["widgets"] if (p := _widget_problem(w))]
        file_values = expected.get(node["id"], {}).get("widgets_values", [])
        if node["saved"] != file_values:
            problems.append(f"{where}: widgets_values after load {node['saved']} != file's {file_values}")
    return problems


def _widget_problem(widget: Mapping[str, Any]) -> str | None:
    value, kind = widget["value"], widget["type"]
    if kind == "combo" and widget["values"] is not None and value not in widget["values"]:
        return f"{value!r} not among {widget['values'][:20]}"
    if kind != "number" or not isinstance(value, (int, float)):
        return None
    low, high = widget["min"], widget["max"]
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{value} outside [{low}, {high}]"
    return None
