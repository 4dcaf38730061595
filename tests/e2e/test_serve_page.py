"""The chat page of ``mmtune serve`` in a real browser (headless Debian chromium through selenium): type a
question, attach an image, read the streamed answer from the page; it must be ``mmtune chat``'s reply to the
same question and image. A screenshot is kept under pytest's tmp dir (its path is printed)."""

from __future__ import annotations

import pytest
import torch
from browser_helpers import chromium, console_errors, needs_chromium
from media_helpers import open_clip_image_branch
from serve_helpers import running

from mmtune.data.media import attach_media
from mmtune.generation.chat import generate_reply
from mmtune.generation.options import GenerationOptions
from mmtune.serving.app import create_app

pytestmark = needs_chromium


@pytest.fixture()
def browser(tmp_path):
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def test_the_page_streams_chats_reply_to_a_question_with_an_image(browser, varied_llama_dirs, tmp_path,
                                                                    one_torch_thread):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from mmtune.config.schema import ModelConfig
    from mmtune.models.loading import load_causal_lm, load_tokenizer
    from mmtune.models.open import open_multimodal

    photo = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(photo)
    torch.manual_seed(0)
    llm_dir = str(varied_llama_dirs[1])
    model = open_multimodal({"image": open_clip_image_branch()}, load_causal_lm(ModelConfig(name=llm_dir))).eval()
    tokenizer = load_tokenizer(ModelConfig(name=llm_dir))
    question = "What colour is this picture?"
    expected = generate_reply(model, tokenizer, attach_media([{"role": "user", "content": question}],
                                                             [("image", str(photo))]), GenerationOptions(max_new_tokens=16))
    with running(create_app(model, tokenizer, "tiny-mm")) as url:
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "model-name").text.startswith("tiny-mm"))
        browser.find_element(By.ID, "max-tokens").clear()
        browser.find_element(By.ID, "max-tokens").send_keys("16")
        browser.find_element(By.ID, "attach").send_keys(str(photo))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#attachments img"))
        browser.find_element(By.ID, "prompt").send_keys(question)
        browser.execute_script(  # count the reply's text updates: a streamed reply arrives in pieces
            "window.updates = 0; new MutationObserver(() => window.updates++).observe("
            "document.getElementById('conversation'), {subtree: true, childList: true, characterData: true});")
        browser.find_element(By.ID, "send").click()
        reply = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, ".message.assistant[data-state='done'], "
                                                                       ".message.error"))
        screenshot = tmp_path / "serve-page.png"
        browser.save_screenshot(str(screenshot))
        print(f"screenshot of the chat page: {screenshot}")
        assert "error" not in reply.get_attribute("class"), reply.text
        assert reply.find_element(By.CLASS_NAME, "text").text == expected and expected
        user = browser.find_element(By.CSS_SELECTOR, ".message.user")
        assert user.find_element(By.TAG_NAME, "img") and question in user.text
        assert browser.execute_script("return window.updates") > 3  # user turn, empty reply, pieces, done
        assert console_errors(browser) == []  # no script error, no request that failed
