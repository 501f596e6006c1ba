"""The studio in a real browser: Debian's headless Chromium driven by Selenium (a test-only extra; no browser
is downloaded at test time). On the tiny models it clicks a candidate in every round, re-rolls a frame, drags
a joint of a skeleton, uses the keyboard, waits for the end and checks run.json against the clicks. A
screenshot of each state goes to $STUDIO_SCREENSHOTS (default: the test's temporary folder)."""
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio_session import Session, command, make_pair

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install '.[test]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("the browser test needs Chromium and its driver (apt install chromium chromium-driver)",
                allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def until(condition, timeout=120):
    """condition()'s first true value; an element the page replaced meanwhile (it re-renders as the run
    goes on) is looked up again."""
    deadline = time.time() + timeout
    while True:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def click(find):
    """Click the element `find()` returns, looking it up again if the page replaced it first."""
    def attempt():
        find().click()
        return True
    until(attempt)


def candidates(driver, frame):
    return driver.find_elements(By.CSS_SELECTOR, f'.candidate[data-frame="{frame}"]')


def test_a_person_steers_a_run_in_the_browser(tmp_path, tiny_dir, clip_tiny, browser):
    make_pair(tmp_path)
    shots = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SD_INTERP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    run = tmp_path / "run"
    studio = Session(command(tmp_path, tiny_dir, clip_tiny, run), env)
    browser.get(studio.url)
    until(lambda: len(candidates(browser, 2)) == 2)
    browser.save_screenshot(str(shots / "1-round-1.png"))

    click(lambda: browser.find_element(By.CSS_SELECTOR, '.reroll[data-frame="2"]'))  # round 1: re-roll, then pick
    until(lambda: len(candidates(browser, 2)) == 4)
    browser.save_screenshot(str(shots / "2-re-rolled.png"))
    clicked = time.perf_counter()
    click(lambda: candidates(browser, 2)[3])
    until(lambda: len(candidates(browser, 1)) == 2 and len(candidates(browser, 3)) == 2)
    click_to_round = time.perf_counter() - clicked
    browser.save_screenshot(str(shots / "3-round-2.png"))

    click(lambda: browser.find_element(By.CSS_SELECTOR, '.pose-edit[data-frame="1"]'))  # round 2: drag a wrist
    wrist = browser.find_element(By.CSS_SELECTOR, '.pose[data-frame="1"] circle[data-joint="4"]')
    before = float(wrist.get_attribute("cx")), float(wrist.get_attribute("cy"))
    ActionChains(browser).click_and_hold(wrist).move_by_offset(30, 20).release().perform()
    wrist = browser.find_element(By.CSS_SELECTOR, '.pose[data-frame="1"] circle[data-joint="4"]')
    after = float(wrist.get_attribute("cx")), float(wrist.get_attribute("cy"))
    assert after[0] > before[0] + 1 and after[1] > before[1] + 1
    browser.save_screenshot(str(shots / "4-pose-dragged.png"))
    click(lambda: browser.find_element(By.CSS_SELECTOR, '.pose-apply[data-frame="1"]'))
    until(lambda: json.loads(studio.get("/api/state")[1])["round"]["frames"][0]["keypoints"] is not None)
    click(lambda: browser.find_element(By.CSS_SELECTOR, '.reroll[data-frame="1"]'))
    until(lambda: len(candidates(browser, 1)) == 4)
    click(lambda: candidates(browser, 1)[2])
    until(lambda: "picked" in candidates(browser, 1)[2].get_attribute("class"))
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN, "2")  # frame 3 by keyboard: its #2
    until(lambda: browser.find_elements(By.ID, "video"))
    browser.save_screenshot(str(shots / "5-finished.png"))
    assert browser.find_element(By.ID, "gif").get_attribute("naturalWidth") != "0"

    click(lambda: browser.find_element(By.ID, "close"))
    code, out = studio.finish()
    assert code == 0 and "wrote 5 frames" in out
    record = json.loads((run / "run.json").read_text())
    steering = record["steering"]
    assert steering["2"]["pick"] == 3 and steering["2"]["by"] == "person" and len(steering["2"]["rolls"]) == 1
    moved = steering["1"]["rolls"][0]["keypoints"][0][4]  # the dragged wrist, in frame pixels
    assert moved[:2] == pytest.approx(after, abs=0.01) and moved[0] > before[0] + 1
    assert record["frames"]["1"]["keypoints"][0][4] == moved and steering["1"]["pick"] == 2
    assert steering["3"] == {"rolls": [], "pick": 1, "by": "person"}
    assert record["frames"]["2"]["kept"] == 3 and record["frames"]["3"]["kept"] == 1
    for frame, kept in ((2, 3), (1, 2), (3, 1)):  # each frame is the candidate that was clicked
        picture = np.asarray(Image.open(run / "frames" / f"frame_{frame:04d}.png"))
        clicked = np.asarray(Image.open(run / "candidates" / f"frame_{frame:04d}_c{kept}.png"))
        assert np.array_equal(picture, clicked), frame
    (shots / "timing.txt").write_text(f"click to the next round's candidates on the page: {click_to_round:.2f} s\n")
