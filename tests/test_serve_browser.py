"""The web page of `swv serve` in a real headless Chromium (Debian's chromium and
chromium-driver, driven with selenium): upload clips, record from a (fake) microphone fed with a
recorded clip, see the answers stream in, continue the conversation.

Opt-in: ``SWV_BROWSER_TESTS=1 .venv/bin/pytest tests/test_serve_browser.py`` with
``apt-get install -y chromium chromium-driver`` done (and the dev extras, for selenium)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    os.environ.get("SWV_BROWSER_TESTS") != "1" or not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="browser test: set SWV_BROWSER_TESTS=1 and install Debian's chromium and chromium-driver",
)
pytest.importorskip("fastapi")
pytest.importorskip("selenium")

SR = 16000
MODEL_ID = "tiny-swv"


def clip(path: Path, seconds: float, seed: int, rate: int = SR) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(path, (rng.standard_normal(int(rate * seconds)) * 0.1).astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def served(model_config_factory, tmp_path_factory):
    from swv.infer.pipeline import Pipeline
    from swv.model.speechlm import SpeechLM
    from swv.serve.app import create_app
    from swv.serve.background import BackgroundServer
    from swv.serve.settings import ServeSettings

    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("browser_model") / "model"
    SpeechLM(model_config_factory()).save_pretrained(model_dir)
    app = create_app(Pipeline.from_pretrained(model_dir),
                     ServeSettings(model_id=MODEL_ID, max_context=2048, default_max_tokens=8))
    with BackgroundServer(app) as server:
        yield server, Pipeline.from_pretrained(model_dir)


@pytest.fixture
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    mic = clip(tmp_path / "mic.wav", 2.0, 7, rate=48000)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the page")


def answers(driver) -> list[tuple[str, str]]:
    """(done flag, text) of every assistant turn on the page."""
    from selenium.webdriver.common.by import By

    return [(t.get_attribute("data-done") or "", t.find_element(By.CLASS_NAME, "text").text)
            for t in driver.find_elements(By.CSS_SELECTOR, ".turn.assistant")]


def ask(driver, prompt: str, expected_turns: int) -> str:
    from selenium.webdriver.common.by import By

    limit = driver.find_element(By.ID, "max-tokens")
    limit.clear()
    limit.send_keys("8")
    driver.find_element(By.ID, "prompt").send_keys(prompt)
    driver.find_element(By.ID, "send").click()
    turns = wait_for(lambda: (a := answers(driver)) and len(a) == expected_turns and a[-1][0] and a)
    assert turns[-1][0] == "1", turns[-1][1]
    return turns[-1][1]


def wav_part(path: Path) -> dict:
    import base64

    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": "wav"}}


def test_upload_answer_streams_in_and_the_conversation_continues(served, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    server, reference = served
    first, second = clip(tmp_path / "first.wav", 1.0, 1), clip(tmp_path / "second.wav", 0.6, 2)
    browser.get(server.url + "/")
    wait_for(lambda: browser.find_element(By.ID, "model-id").text == MODEL_ID)
    browser.find_element(By.ID, "file").send_keys(str(first))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#pending .clip-tag"))
    answer1 = ask(browser, "Transcribe the speech.", 1)
    turn1 = {"role": "user", "content": [wav_part(first), {"type": "text", "text": "Transcribe the speech."}]}
    # 16 kHz 16-bit clips survive the browser's decode/re-encode bit-exactly: the same answer
    assert answer1 == reference.chat([turn1], max_new_tokens=8)
    browser.find_element(By.ID, "file").send_keys(str(second))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#pending .clip-tag"))
    answer2 = ask(browser, "And this one?", 2)
    turn2 = {"role": "user", "content": [wav_part(second), {"type": "text", "text": "And this one?"}]}
    assert answer2 == reference.chat([turn1, {"role": "assistant", "content": answer1}, turn2], max_new_tokens=8)
    browser.save_screenshot(str(tmp_path / "page.png"))


def test_record_from_the_microphone(served, browser) -> None:
    from selenium.webdriver.common.by import By

    server, _ = served
    browser.get(server.url + "/")
    wait_for(lambda: browser.find_element(By.ID, "model-id").text == MODEL_ID)
    browser.find_element(By.ID, "record").click()
    wait_for(lambda: browser.find_element(By.ID, "record").text == "Stop")
    time.sleep(1.5)
    browser.find_element(By.ID, "record").click()
    tags = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#pending .clip-tag"))
    assert tags[0].text.startswith("recording")
    answer = ask(browser, "What is said?", 1)
    assert answer  # the tiny random model answers with some text
    assert ask(browser, "Say more.", 2)  # a text-only follow-up continues the conversation
