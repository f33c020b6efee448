"""Open an aevb report in headless Chromium: every image rendered, console errors, the latent explorer's decoded
image against PyTorch's decoder at four pointer positions, and a full-page screenshot.

Usage: python experiments/browser_check.py RUN REPORT.html SCREENSHOT.png
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import console_errors, full_page_screenshot, start_chromium, stop_chromium  # noqa: E402

from aevb import load_run  # noqa: E402


def main(run: str, report: str, shot: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    model, _ = load_run(run)
    driver = start_chromium()
    try:
        driver.get(Path(report).resolve().as_uri())
        driver.execute_async_script("const done = arguments[arguments.length - 1]; Promise.all(Array.from("
                                    "document.images).map(i => i.decode().catch(() => null))).then(() => done(1));")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight]);")
        print("images", images)
        print("every image rendered:", all(w > 0 and h > 0 for _, w, h in images))
        plane = driver.find_element(By.ID, "explorer-plane")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", plane)
        worst, pictures = 0.0, []
        for dx, dy in ((-100, -100), (100, 60), (0, 0), (150, -150)):
            ActionChains(driver).move_to_element_with_offset(plane, dx, dy).perform()
            state = driver.execute_script("return window.aevbExplorer.state")
            z = torch.tensor(state["z"], dtype=torch.float32)
            with torch.no_grad():
                expected = model.decode(z[None]).mean[0].numpy()
            err = float(np.abs(np.array(state["image"]) - expected).max())
            worst = max(worst, err)
            pictures.append(np.array(state["image"]))
            print("dims", state["dims"], "z there", np.round(np.array(state["z"])[state["dims"]], 3).tolist(),
                  "max |page - torch|", err)
        print("max |page - torch| over the positions:", worst,
              "largest pixel change between positions 1 and 2:", float(np.abs(pictures[0] - pictures[1]).max()))
        print("console errors:", console_errors(driver))
        driver.execute_script("window.scrollTo(0, 0)")
        full_page_screenshot(driver, Path(shot))
        print("screenshot:", shot)
    finally:
        stop_chromium(driver)


if __name__ == "__main__":
    main(*sys.argv[1:4])
