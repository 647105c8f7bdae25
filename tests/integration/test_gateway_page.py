"""The mesh page at `/` in a real headless chromium: the table fills from the agents' statuses, a question asked
through the page gets its streamed answer and trace."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from edge_agent.local.mesh import LocalMesh
from edge_agent.mqtt.broker_process import MosquittoProcess
from tests.integration.gateway_helpers import GatewayProcess
from tests.integration.page_browser import headless_chromium

pytestmark = pytest.mark.slow
API_KEY = "page-key-" + uuid.uuid4().hex[:12]


@pytest.fixture
def browser():
    driver = headless_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def mesh_and_gateway(model_dir: Path, max_new_tokens: int, threads: int = 1):
    broker = MosquittoProcess().start()
    mesh = LocalMesh(3, engine={"model": str(model_dir), "threads": threads}, broker=broker,
                     moa={"max_new_tokens": max_new_tokens}, topic_root=f"test/{uuid.uuid4().hex[:8]}")
    return broker, mesh


def ask_through_the_page(browser, url: str, prompt: str, layers: int, proposers: int, timeout_s: float) -> dict:
    browser.get(url)
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_element(By.ID, "key-box").is_displayed())  # 401: the page asks for the key
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(API_KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    wait.until(lambda d: d.execute_script("return document.querySelectorAll("
                                          "'#mesh-table tbody tr[data-device]').length") == 3)
    prompt_box = browser.find_element(By.ID, "prompt")
    prompt_box.clear()
    prompt_box.send_keys(prompt)
    Select(browser.find_element(By.ID, "layers")).select_by_value(str(layers))
    Select(browser.find_element(By.ID, "proposers")).select_by_visible_text(str(proposers))
    browser.find_element(By.ID, "ask").click()
    WebDriverWait(browser, timeout_s).until(
        lambda d: d.find_element(By.ID, "answer").get_attribute("data-done") == "1"
        or "error" in d.find_element(By.ID, "answer").get_attribute("class"))
    # the table is redrawn every second: read it in one script, not element by element (stale references)
    table = browser.execute_script(
        "const t = {}; document.querySelectorAll('#mesh-table tbody tr[data-device]')"
        ".forEach((r) => { t[r.dataset.device] = r.innerText.replace(/\\t/g, ' '); }); return t;")
    return {
        "answer": browser.find_element(By.ID, "answer").text,
        "answer_class": browser.find_element(By.ID, "answer").get_attribute("class"),
        "meta": browser.find_element(By.ID, "answer-meta").text,
        "trace": [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#trace tr")][1:],
        "table": table,
        "status": browser.find_element(By.ID, "status").text,
    }


def test_page_asks_the_mesh_and_shows_the_streamed_answer_and_trace(tiny_model_dir, browser, tmp_path):
    broker, mesh = mesh_and_gateway(tiny_model_dir, 8)
    try:
        with mesh, GatewayProcess(broker.address, "agent2", mesh.topic_root, tmp_path, api_key=API_KEY) as gw:
            seen = ask_through_the_page(browser, gw.url + "/", "Tell me about the sea.", 1, 2, 60)
            chart_lines = browser.execute_script("return document.querySelectorAll('#queue-chart polyline').length")
            print(gw.log())
    finally:
        broker.stop()
    assert "error" not in seen["answer_class"], seen
    assert seen["answer"].strip() and "first text after" in seen["meta"] and "4 inferences" in seen["meta"]
    assert len(seen["trace"]) == 2 and seen["trace"][0].startswith("1 propose agent2")
    assert seen["trace"][1].startswith("2 aggregate agent2")
    assert set(seen["table"]) == {"agent1", "agent2", "agent3"}
    assert all(" yes " in row for row in seen["table"].values())
    assert "3/3 agents online" in seen["status"] and "broker connected" in seen["status"]
    assert chart_lines == 3  # one line per agent


def test_page_with_the_default_model_and_a_screenshot(default_model_dir, browser, tmp_path):
    """The default model answers in English; EDGE_MOA_PAGE_SCREENSHOT names where the picture goes (docs/)."""
    target = Path(os.environ.get("EDGE_MOA_PAGE_SCREENSHOT", tmp_path / "mesh-page.png"))
    warmup_s = float(os.environ.get("EDGE_MOA_PAGE_WARMUP_S", "0"))
    broker, mesh = mesh_and_gateway(default_model_dir, 48)
    try:
        with mesh, GatewayProcess(broker.address, "agent1", mesh.topic_root, tmp_path, api_key=API_KEY) as gw:
            deadline = time.monotonic() + warmup_s  # some traffic first, so the charts have a history to draw
            with mesh.client() as client:
                while time.monotonic() < deadline:
                    futures = [client.submit(d, "Name a fruit.", layers=1, proposers=1, max_new_tokens=16)
                               for d in mesh.devices]
                    for future in futures:
                        future.result(timeout=120)
            seen = ask_through_the_page(browser, gw.url + "/", "Why is the sky blue? Answer in two sentences.",
                                        1, 2, 180)
            time.sleep(1.5)  # one more refresh of table and charts
            browser.save_screenshot(str(target))
    finally:
        broker.stop()
    assert "error" not in seen["answer_class"], seen
    assert len(seen["answer"].split()) >= 3 and len(seen["trace"]) == 2
    assert target.stat().st_size > 10_000
