"""One end-to-end run in a real headless Chromium: log in, Generate PDF, see it succeed, download it.

bin/test installs Debian's chromium and chromium-driver when they are missing. The
screenshot is saved to var/test-artifacts/admin-generate-pdf.png.
"""

import io
import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from pypdf import PdfReader

from invoices.tests.factories import make_invoice
from jobs.testing import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(
            "chromium and chromedriver are missing: run `make test`, which installs them (Debian packages)."
        )
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def test_operator_generates_and_downloads_an_invoice_pdf_in_a_real_browser(worker, live_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    User.objects.create_superuser("operator", "operator@example.com", "a-long-test-password")
    invoice = make_invoice(lines=3)

    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys("a-long-test-password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(lambda: "Site administration" in browser.title, timeout=15, message="the admin index")

    browser.get(f"{live_server.url}/admin/invoices/invoice/")
    browser.find_element(By.CSS_SELECTOR, f"input[name=_selected_action][value='{invoice.pk}']").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("generate_pdf")
    browser.find_element(By.NAME, "index").click()
    message = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "ul.messagelist"),
        timeout=15,
        message="the action's message",
    )
    assert "PDF job(s) enqueued for 1 invoice(s)" in message[0].text

    def job_succeeded():
        browser.refresh()
        table = browser.find_elements(By.ID, "result_list")
        return table and "Succeeded" in table[0].text

    wait_for(job_succeeded, timeout=30, interval=0.5, message="the PDF job to show Succeeded")
    artifacts = Path(settings.BASE_DIR) / "var" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(artifacts / "admin-generate-pdf.png"))

    browser.find_element(By.LINK_TEXT, "download").click()
    pdf_path = browser.downloads / f"{invoice.number}.pdf"

    def downloaded():
        # Chromium writes name.crdownload and renames it into place once it is complete.
        if not pdf_path.exists() or any(browser.downloads.glob("*.crdownload")):
            return None
        data = pdf_path.read_bytes()
        return data if data.rstrip().endswith(b"%%EOF") else None

    data = wait_for(downloaded, timeout=20, message="the complete download")
    assert data.startswith(b"%PDF")
    assert invoice.number in PdfReader(io.BytesIO(data)).pages[0].extract_text()
