"""The studio in a real browser: Debian's headless Chromium driven by Selenium (a test-only extra; no browser
is downloaded at test time). On the tiny models a person sets a prompt, re-rolls, keeps candidates by click
and by keyboard, drags a joint of a skeleton, waits for the end, revises a frame and closes the studio; the
test reads what the page says at each step (the progress line, the feedback of each button, which candidate
Enter keeps, where the focus goes, whether Revise is in view), checks run.json against the clicks and that
the browser logged no error. A screenshot of each state goes to $STUDIO_SCREENSHOTS (default: the test's
temporary folder)."""
import json
import os
import re
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
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, to find errors in it
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


def find(driver, selector):
    return driver.find_element(By.CSS_SELECTOR, selector)


def marked(driver, frame, mark):
    """The candidates of `frame` with class `mark` (selected: what Enter keeps; kept; before)."""
    return [k for k, c in enumerate(candidates(driver, frame)) if mark in c.get_attribute("class").split()]


def focused(driver):
    return int(find(driver, ".frame.focus").get_attribute("data-frame"))


def note(driver, frame):
    return find(driver, f'.note[data-frame="{frame}"]').text


def in_view(driver, element) -> bool:
    return driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                 "return r.top >= 0 && r.bottom <= window.innerHeight && r.width > 0;", element)


LINE = re.compile(r"(step|iteration) (\d+) of (\d+)(?:, about (\d+) s left)?")


def watch_progress(driver, done, timeout=120):
    """What the header said (status, progress line) until done(): every line read is checked as it is seen,
    a step never past its total and no negative time left."""
    seen, deadline = [], time.time() + timeout
    while not done():
        assert time.time() < deadline, seen
        try:
            status, line = find(driver, "#status").text, find(driver, "#progress").text
        except StaleElementReferenceException:
            continue
        if line and (status, line) not in seen:
            match = LINE.fullmatch(line)
            assert match and int(match[2]) <= int(match[3]), (status, line)
            seen.append((status, line))
        time.sleep(0.02)
    return seen


def test_a_person_steers_a_run_in_the_browser(tmp_path, tiny_dir, clip_tiny, browser):
    make_pair(tmp_path)
    shots = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SD_INTERP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    run = tmp_path / "run"
    # Enough DDIM steps that a re-roll lasts several of the page's polls, for the test to read its progress;
    # seed 3 makes frame 2's re-roll beat CLIP's first pick by far (0.109 against -0.013 where it was written)
    studio = Session(command(tmp_path, tiny_dir, clip_tiny, run, "--steps", "60", "--seed", "3"), env)
    browser.get(studio.url)
    body = browser.find_element(By.TAG_NAME, "body")
    until(lambda: len(candidates(browser, 2)) == 2)
    browser.save_screenshot(str(shots / "01-round-1.png"))

    # Round 1, frame 2: the keys act on it, its highlight is CLIP's pick and the page says Enter keeps it
    clip = studio.frame(studio.state(), 2)["clip_pick"]
    assert focused(browser) == 2 and marked(browser, 2, "selected") == [clip]
    assert f"Enter keeps #{clip + 1} (CLIP's pick)" in find(browser, '.frame[data-frame="2"] h3').text
    score = find(browser, f'.candidate[data-frame="2"][data-candidate="{clip}"] .score')
    assert score.text.startswith("CLIP ") and "CLIP score" in score.get_attribute("title")
    assert "CLIP's pick" in find(browser, f'.candidate[data-frame="2"][data-candidate="{clip}"] .badges').text
    assert "not revised" in find(browser, '.slot[data-index="0"]').get_attribute("title")

    # Set prompt: disabled with a reason until something is typed, then says it was saved and what uses it
    box, setter = find(browser, '.prompt-input[data-frame="2"]'), find(browser, '.prompt-set[data-frame="2"]')
    assert not setter.is_enabled() and "type a prompt" in setter.get_attribute("title")
    box.send_keys("a red ball")
    assert setter.is_enabled()
    setter.click()
    until(lambda: "prompt saved" in note(browser, 2) and "a red ball" in note(browser, 2))
    until(lambda: studio.frame(studio.state(), 2)["prompt"] == "a red ball")
    until(lambda: "its own prompt" in find(browser, '.frame[data-frame="2"] h3').text)
    setter = find(browser, '.prompt-set[data-frame="2"]')
    assert not setter.is_enabled() and "already set" in setter.get_attribute("title")
    assert "ready" in find(browser, '.reroll[data-frame="2"]').get_attribute("class")
    browser.save_screenshot(str(shots / "02-prompt-saved.png"))

    # Re-roll: the progress line names it and stays within its total; the highlight follows CLIP's new pick
    click(lambda: find(browser, '.reroll[data-frame="2"]'))
    seen = watch_progress(browser, lambda: len(candidates(browser, 2)) == 4)
    assert any(status == "re-rolling frame 2" for status, _ in seen), seen
    until(lambda: "re-roll done: #3, #4 are new" in note(browser, 2))
    browser.save_screenshot(str(shots / "03-re-rolled.png"))
    first, clip = clip, studio.frame(studio.state(), 2)["clip_pick"]
    assert clip >= 2 and first < 2  # CLIP now picks a re-rolled candidate: the highlight must follow it
    assert marked(browser, 2, "selected") == [clip] and f"CLIP's pick is #{clip + 1}" in note(browser, 2)
    body.send_keys(Keys.ENTER)  # Enter keeps CLIP's pick, whichever candidate it is now
    until(lambda: len(candidates(browser, 1)) == 2 and len(candidates(browser, 3)) == 2)
    kept_2 = clip
    assert focused(browser) == 1  # a new round: the focus is on its first frame
    browser.save_screenshot(str(shots / "04-round-2.png"))

    # Round 2, frame 1: drag a wrist, set the pose, move the highlight, re-roll: the highlight stays put
    click(lambda: find(browser, '.pose-edit[data-frame="1"]'))
    wrist = find(browser, '.pose[data-frame="1"] circle[data-joint="4"]')
    before = float(wrist.get_attribute("cx")), float(wrist.get_attribute("cy"))
    ActionChains(browser).click_and_hold(wrist).move_by_offset(30, 20).release().perform()
    wrist = find(browser, '.pose[data-frame="1"] circle[data-joint="4"]')
    after = float(wrist.get_attribute("cx")), float(wrist.get_attribute("cy"))
    assert after[0] > before[0] + 1 and after[1] > before[1] + 1
    browser.save_screenshot(str(shots / "05-pose-dragged.png"))
    click(lambda: find(browser, '.pose-apply[data-frame="1"]'))
    until(lambda: "pose saved" in note(browser, 1))
    until(lambda: studio.state()["round"]["frames"][0]["keypoints"][0][4][0] > before[0] + 1)
    moved = 1 - studio.frame(studio.state(), 1)["clip_pick"]
    body.send_keys(Keys.ARROW_RIGHT)  # the person moves frame 1's highlight off CLIP's pick
    until(lambda: marked(browser, 1, "selected") == [moved])
    click(lambda: find(browser, '.reroll[data-frame="1"]'))
    watch_progress(browser, lambda: len(candidates(browser, 1)) == 4)
    until(lambda: "re-roll done" in note(browser, 1))
    assert marked(browser, 1, "selected") == [moved]
    assert f"Enter keeps #{moved + 1}" in find(browser, '.frame[data-frame="1"] h3').text
    body.send_keys(Keys.ENTER)  # keeps what the person chose; the focus moves on to frame 3
    until(lambda: focused(browser) == 3)
    until(lambda: marked(browser, 1, "kept") == [moved])
    assert in_view(browser, find(browser, ".frame.focus h3"))  # scrolled to, below the open pose editor
    browser.save_screenshot(str(shots / "06-focus-moved-on.png"))
    body.send_keys("2")  # frame 3 by keyboard: its #2
    until(lambda: browser.find_elements(By.ID, "video"))
    browser.save_screenshot(str(shots / "07-finished.png"))
    assert find(browser, "#gif").get_attribute("naturalWidth") != "0"
    assert "64×64 px" in find(browser, "#finished figcaption").text

    record = json.loads((run / "run.json").read_text())
    steering = record["steering"]
    assert steering["2"] == {"rolls": [{"prompt": "a red ball", "keypoints": None}], "pick": kept_2, "by": "person",
                             "prompt": "a red ball"}
    assert steering["1"]["pick"] == moved and steering["1"]["by"] == "person"
    dragged = steering["1"]["rolls"][0]["keypoints"][0][4]  # the wrist, in frame pixels
    assert dragged[:2] == pytest.approx(after, abs=0.01)
    assert record["frames"]["1"]["keypoints"][0][4] != dragged  # kept from the first batch: the interpolated pose
    assert steering["3"] == {"rolls": [], "pick": 1, "by": "person"}
    assert record["frames"]["2"]["kept"] == kept_2 and record["frames"]["3"]["kept"] == 1
    for frame, kept in ((2, kept_2), (1, moved), (3, 1)):  # each frame is the candidate that was kept
        picture = np.asarray(Image.open(run / "frames" / f"frame_{frame:04d}.png"))
        chosen = np.asarray(Image.open(run / "candidates" / f"frame_{frame:04d}_c{kept}.png"))
        assert np.array_equal(picture, chosen), frame

    # Revise frame 2: selected in the strip, the Revise button is in view at once
    assert "Select" not in find(browser, "#revise").text and not find(browser, "#revise").is_enabled()
    click(lambda: find(browser, '.slot[data-index="2"]'))
    until(lambda: find(browser, "#revise").is_enabled())
    assert in_view(browser, find(browser, "#revise")) and find(browser, "#revise").text.startswith("Revise frame 2")
    browser.save_screenshot(str(shots / "08-frame-selected.png"))
    clicked = time.perf_counter()
    click(lambda: find(browser, "#revise"))
    seen = watch_progress(browser, lambda: len(candidates(browser, 2)) == 4)  # its re-roll made again too
    revision_seconds = time.perf_counter() - clicked
    assert any(status == "revising frame 2, round 1 of 2" for status, _ in seen), seen
    assert marked(browser, 2, "before") == [kept_2] and "kept before" in candidates(browser, 2)[kept_2].text
    browser.save_screenshot(str(shots / "09-revision.png"))
    click(lambda: find(browser, "#accept"))
    until(lambda: candidates(browser, 1) and candidates(browser, 3))  # round 2 again, frame 1's re-roll made again
    click(lambda: find(browser, "#accept"))
    until(lambda: browser.find_elements(By.ID, "close"))

    # Close: the page says so and stops asking; the whole session logged no error in the console
    click(lambda: find(browser, "#close"))
    until(lambda: "closed" in find(browser, "#status").text)
    code, out = studio.finish()
    assert code == 0 and "wrote 5 frames" in out
    find(browser, '.slot[data-index="1"]').click()  # a click on the closed page asks nothing of the server
    time.sleep(1.5)  # a page still polling would log a refused connection meanwhile
    browser.save_screenshot(str(shots / "10-closed.png"))
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    (shots / "timing.txt").write_text(f"revise click to its candidates on the page: {revision_seconds:.2f} s\n"
                                      f"progress lines seen in the revision: {seen}\n")


def test_without_pose_guidance_the_page_says_why(tmp_path, tiny_dir, clip_tiny, browser):
    make_pair(tmp_path)
    env = {**os.environ, "SD_INTERP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    args = command(tmp_path, tiny_dir, clip_tiny, tmp_path / "run")
    at = args.index("--poses")
    del args[at:at + 3]  # no keypoints given and no --pose: the run has no pose guidance
    args[args.index("--frames") + 1] = "3"
    studio = Session(args, env)
    browser.get(studio.url)
    until(lambda: len(candidates(browser, 1)) == 2)
    edit = find(browser, '.pose-edit[data-frame="1"]')
    assert not edit.is_enabled() and "no pose guidance" in edit.get_attribute("title")
    browser.save_screenshot(str(Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path) / "11-no-pose-guidance.png"))
    click(lambda: find(browser, "#accept"))
    until(lambda: browser.find_elements(By.ID, "close"))
    click(lambda: find(browser, "#close"))
    until(lambda: "closed" in find(browser, "#status").text)
    assert studio.finish()[0] == 0
    time.sleep(1)
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
