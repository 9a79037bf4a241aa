// Drives `tetik console` in Debian's Chromium with playwright-core (tests/flows/console/test_browser.py).
// Input: one JSON argument {url, token, bad, good, events, shopper, shots}; output: one JSON line of what
// each step saw. Screenshots go to `shots`. Any failure prints {"error": ...} and exits 1.
import { chromium } from "playwright-core";

const input = JSON.parse(process.argv[2]);
const seen = {};
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(10000);
  const shot = (name) => page.screenshot({ path: `${input.shots}/${name}.png`, fullPage: false });

  // load: no session -> the login form (401)
  const first = await page.goto(input.url + "/");
  seen.first_status = first.status();
  seen.login_form = await page.locator("#token").count();
  await shot("1-login");

  // log in, and the journeys graph with its counts
  await page.fill("#token", input.token);
  await Promise.all([page.waitForURL(input.url + "/"), page.click("#login")]);
  seen.graphs = await page.locator(".graph").count();
  seen.counts = await page.locator(".node .count").allInnerTexts();
  seen.trigger = await page.locator(".node.trigger .label").first().innerText();
  await shot("2-journeys");

  // push a bad file: the problem shows under its line, the version stays
  await page.click("text=Rules versions");
  seen.active_before = await page.locator("#versions tr.active td").first().innerText();
  await page.fill("#rules-text", input.bad);
  await page.click("#push");
  await page.waitForSelector(".inline-error");
  seen.inline_error = await page.locator(".inline-error").first().innerText();
  seen.inline_line = await page.locator(".inline-error").first().getAttribute("data-line");
  seen.bad_message = await page.locator("#message").innerText();
  await page.locator(".inline-error").first().scrollIntoViewIfNeeded();
  await shot("3-push-rejected");

  // push a good one: the version switches, by the console user
  await page.fill("#rules-text", input.good);
  await page.click("#push");
  await page.waitForSelector("#message");
  seen.good_message = await page.locator("#message").innerText();
  seen.active_after = await page.locator("#versions tr.active td").first().innerText();
  seen.active_who = await page.locator("#versions tr.active td.who").innerText();
  seen.diff_added = await page.locator("#diff .add").allInnerTexts();
  await shot("4-pushed");

  // a backtest of the good draft on pasted events
  await page.click("text=Backtest");
  await page.fill("#draft", input.good);
  await page.check("#source-paste");
  await page.fill("#events", input.events);
  await page.click("#run-backtest");
  await page.waitForSelector("#outcome");
  seen.backtest = await page.locator("#outcome h2").first().innerText();
  seen.backtest_rows = await page.locator("#actions tr").count();
  await shot("5-backtest");

  // one shopper
  await page.click("text=Shopper");
  await page.fill("#shopper-id", input.shopper);
  await page.click("#lookup");
  await page.waitForSelector("#shopper");
  seen.shopper = await page.locator("#shopper h2").first().innerText();
  seen.shopper_actions = await page.locator("#recent-actions tr").count();
  await shot("6-shopper");
  console.log(JSON.stringify(seen));
} catch (error) {
  console.log(JSON.stringify({ error: String(error), seen }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
