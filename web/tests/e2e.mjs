// End-to-end test of the page in Debian's headless Chromium (driven by playwright-core; no
// browser is downloaded), on WebGPU over SwiftShader:
//   1. the page loads the tiny test model (tests/fixtures/pipeline_tiny) and generates from a
//      typed prompt; the RGBA it returns must match the native CLI's PNG for the same prompt,
//      seed, steps, size, guidance and scheduler within TOLERANCE per channel (the same
//      pipeline; SwiftShader has no f16 and no subgroups, so the f32 fallback kernels run and
//      only the float summation order differs);
//   2. the live preview was drawn and the PNG download link holds the same image;
//   3. the shipped model (weights/default: T5 with its word-level tokenizer, consistency
//      decoder, the T5 prompt rewriter hoa.json names), fetched from another origin in Hugging
//      Face's resolve/main layout (serveHub: no files.json, so the worker discovers the files
//      through hoa's download plan and its rewriter stage), generates 64x64 and matches the native CLI too; its screenshot is
//      web/screenshot.png. A reload then requests nothing from that server (the model comes
//      from Cache Storage) and generates the same image; times to first image, cold and cached;
//   4. with WebGPU disabled the page shows its no-WebGPU message.
// Needs: web/build.sh run (web/pkg), target/release/hoa built (cargo build --release), and
// /usr/bin/chromium. Prints "N passed, M failed" last; exits 1 on any failure.
//   node web/tests/e2e.mjs          (env: CHROMIUM=path, HOA_BIN=path, E2E_TIMEOUT_S=600)
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot, serve, serveHub } from "../serve.mjs";

const TOLERANCE = 2; // of 255, per channel
const MODEL = "tests/fixtures/pipeline_tiny";
const INPUT = {
  model: MODEL,
  prompt: "a red circle left of a blue square",
  negative: "green",
  seed: 7,
  steps: 2, // SwiftShader is ~5x slower than lavapipe
  guidance: 4,
  guidanceHigh: null, // guidance throughout
  width: 32,
  height: 24,
  scheduler: "ddim",
  eta: 1, // DDIM's seeded per-step noise must be the CLI's too (eta 1 moves this image by up to 7/255 from eta 0)
  decoder: "vae",
};
// The shipped model as a visitor gets it (the page's default folder): its T5 encoder and
// word-level tokenizer, the consistency decoder, at its native 64x64.
const SHIPPED = {
  model: "weights/default",
  prompt: "a large red circle left of a small blue square",
  negative: "",
  seed: 3,
  steps: 4,
  guidance: 3,
  guidanceHigh: { scale: 5, from: 500 }, // 4 trailing steps: 999 and 749 at 5, then 3
  width: 64,
  height: 64,
  scheduler: "ddim",
  eta: 0,
  decoder: "consistency",
  // hoa.json's prompt rewriter (its T5, on the GPU), run by the page and the CLI alike.
  upsampled: "a large solid red circle left of a small solid blue square",
};
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const LIMIT_S = Number(process.env.E2E_TIMEOUT_S || 600);
const FLAGS = [
  "--headless=new",
  "--no-sandbox",
  "--use-angle=swiftshader",
  "--use-webgpu-adapter=swiftshader",
  "--disable-background-networking",
  "--disable-sync",
  "--disable-component-update",
  "--no-first-run",
];
const WEBGPU = ["--enable-unsafe-webgpu"];
const NO_WEBGPU = ["--disable-features=WebGPU"];

// The whole run is bounded: a hung browser or server must not hang CI.
const killer = setTimeout(() => {
  console.log(`e2e: gave up after ${LIMIT_S} s`);
  console.log("0 passed, 1 failed");
  process.exit(1);
}, LIMIT_S * 1000);
killer.unref();

let passed = 0;
let failed = 0;
function check(name, ok, detail = "") {
  if (ok) passed += 1;
  else failed += 1;
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${detail ? `: ${detail}` : ""}`);
}

const out = join(repoRoot, "web/tests/out");
mkdirSync(out, { recursive: true });

function nativeImage(INPUT) {
  const bin = process.env.HOA_BIN || join(process.env.CARGO_TARGET_DIR || join(repoRoot, "target"), "release/hoa");
  if (!existsSync(bin)) throw new Error(`${bin} is missing: cargo build --release first`);
  const png = join(out, "native.png");
  const t0 = Date.now();
  // The CLI runs on whatever native adapter there is (lavapipe in CI).
  execFileSync(
    bin,
    [
      "generate", INPUT.prompt, "--negative", INPUT.negative, "--model", join(repoRoot, INPUT.model),
      "--seed", String(INPUT.seed), "--steps", String(INPUT.steps), "--guidance", String(INPUT.guidance),
      "--width", String(INPUT.width), "--height", String(INPUT.height),
      "--scheduler", INPUT.scheduler, "--eta", String(INPUT.eta), "--decoder", INPUT.decoder,
      ...(INPUT.guidanceHigh
        ? ["--guidance-high", String(INPUT.guidanceHigh.scale), "--guidance-high-from", String(INPUT.guidanceHigh.from)]
        : []),
      "--out", png, "--force",
    ],
    { stdio: ["ignore", "inherit", "inherit"], env: { XDG_RUNTIME_DIR: "/tmp", ...process.env } }
  );
  console.log(`native CLI: ${Date.now() - t0} ms`);
  return readFileSync(png);
}

async function launch(extra, viewport = { width: 820, height: 760 }) {
  // A fresh profile (--user-data-dir, which playwright takes as this argument) per case.
  const profile = mkdtempSync(join(tmpdir(), "hoa-e2e-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...FLAGS, ...extra],
    viewport,
  });
  return {
    page: context.pages()[0] || (await context.newPage()),
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

function logConsole(page, tag) {
  page.on("console", (m) => {
    if (["error", "warning"].includes(m.type())) console.log(`[${tag} ${m.type()}] ${m.text()}`);
  });
  page.on("pageerror", (e) => console.log(`[${tag} pageerror] ${e.message}`));
}

// Decodes PNG bytes to RGBA in the page (the browser's decoder; no color conversion).
async function decodeInPage(page, bytes) {
  return await page.evaluate(async (b64) => {
    const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bmp = await createImageBitmap(new Blob([bin], { type: "image/png" }), {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    const g = c.getContext("2d");
    g.drawImage(bmp, 0, 0);
    return { width: bmp.width, height: bmp.height, rgba: Array.from(g.getImageData(0, 0, bmp.width, bmp.height).data) };
  }, Buffer.from(bytes).toString("base64"));
}

function maxDiff(a, b) {
  let m = 0;
  let at = -1;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > m) [m, at] = [d, i];
  }
  return { max: m, at };
}

// Generates INPUT in the page and checks it against the native CLI; `full` adds the checks
// that need only be made once (limits, painting, preview, download); `shot` saves a screenshot.
async function fillForm(page, INPUT) {
  await page.fill("#prompt", INPUT.prompt);
  await page.fill("#negative", INPUT.negative);
  await page.fill("#seed", String(INPUT.seed));
  await page.fill("#steps", String(INPUT.steps));
  await page.fill("#guidance", String(INPUT.guidance));
  await page.fill("#guidance-high", INPUT.guidanceHigh ? String(INPUT.guidanceHigh.scale) : "");
    if (INPUT.guidanceHigh) await page.fill("#guidance-high-from", String(INPUT.guidanceHigh.from));
  await page.fill("#width", String(INPUT.width));
  await page.fill("#height", String(INPUT.height));
  await page.fill("#preview-every", "1");
  await page.selectOption("#scheduler", INPUT.scheduler);
  await page.fill("#eta", String(INPUT.eta));
  await page.selectOption("#decoder", INPUT.decoder);
}

async function waitReady(page, tag, what, t0) {
  await page.waitForSelector("body[data-state=ready], body[data-state=error]", { timeout: LIMIT_S * 1000 });
  const state = await page.evaluate(() => document.body.dataset.state);
  const tReady = Date.now() - t0;
  const message = await page.textContent("#message");
  check(`page loads ${tag} ${what}`, state === "ready", state === "ready" ? `${tReady} ms` : message);
  return state === "ready" ? tReady : null;
}

// `hub`: load the model from that stand-in for the Hub instead of the page's own server, then
// reload and check that the cached model is used.
async function withWebGpu(base, INPUT, { full = true, shot = null, hub = null } = {}) {
  const native = nativeImage(INPUT);
  const { page, close } = await launch(WEBGPU);
  const tag = INPUT.model.split("/").pop();
  try {
    logConsole(page, "page");
    const t0 = Date.now();
    const model = hub ? `${hub.url}/hoa/${tag}/resolve/main/` : INPUT.model;
    await page.goto(INPUT.model === "weights/default" && !hub ? `${base}/web/` : `${base}/web/?model=${model}`);
    const tReady = await waitReady(page, tag, hub ? "from a Hub-layout URL through the worker" : "on WebGPU", t0);
    if (tReady === null) return;
    if (hub) {
      const how = await page.evaluate(() => window.hoaLoad);
      check(`${tag}: files discovered without files.json`, how.how === "discovered" && how.network > 0, JSON.stringify(how));
    }
    const adapter = await page.textContent("#adapter");
    console.log(`adapter: ${adapter}`);
    // SwiftShader offers 1 GiB bindings; hoa must ask for WebGPU's default 128 MiB only.
    if (full) check("device asks for WebGPU's default limits only", /storage binding up to 128 MiB/.test(adapter), adapter);

    await fillForm(page, INPUT);
    // Count animation frames while it generates: the page must keep painting.
    await page.evaluate(() => {
      window.hoaFrames = 0;
      const tick = () => {
        window.hoaFrames += 1;
        if (document.body.dataset.state !== "done") requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    });
    const t1 = Date.now();
    await page.click("#generate");
    await page.waitForSelector("body[data-state=done], body[data-state=failed]", { timeout: LIMIT_S * 1000 });
    const tGen = Date.now() - t1;
    const done = (await page.evaluate(() => document.body.dataset.state)) === "done";
    check(`${tag}: generates an image`, done, done ? `${tGen} ms` : await page.textContent("#message"));
    if (!done) return;
    console.log(
      `${tag}: time to first image: ${Date.now() - t0} ms from navigation (page + wasm + model ${tReady} ms, ` +
        `generation ${tGen} ms, ${INPUT.width}x${INPUT.height}, ${INPUT.steps} steps)`
    );
    if (shot) await page.screenshot({ path: shot });

    const last = await page.evaluate(() => ({ ...window.hoaLast, rgba: Array.from(window.hoaLast.rgba), previews: window.hoaPreviews || 0 }));
    const ref = await decodeInPage(page, native);
    matchesNative(tag, last, ref);
    const shown = (await page.textContent("#upsampled")) || "";
    check(
      `${tag}: ${INPUT.upsampled ? "shows the upsampled prompt" : "no prompt upsampling without hoa.json"}`,
      INPUT.upsampled ? shown.includes(INPUT.upsampled) : shown === "",
      JSON.stringify(shown)
    );
    const rewriteMs = await page.evaluate(() => window.hoaLastRewriteMs);
    if (INPUT.upsampled) console.log(`${tag}: prompt rewrite in the browser: ${Math.round(rewriteMs)} ms (click to the rewritten prompt)`);
    if (hub) await cachedReload(page, INPUT, hub, ref, Date.now() - t0);
    if (!full) return;
    const frames = await page.evaluate(() => window.hoaFrames);
    check("page keeps painting while generating", frames >= 2 * INPUT.steps, `${frames} animation frames in ${tGen} ms`);
    check("live preview drawn", last.previews >= 1, `${last.previews} preview(s) for ${INPUT.steps} steps, every 1`);

    // The download link's PNG: the same pixels, and the parameters chunk.
    const png = await page.evaluate(async () => {
      const a = document.getElementById("download");
      const b = new Uint8Array(await (await fetch(a.href)).arrayBuffer());
      return { name: a.download, b64: btoa(String.fromCharCode(...b)) };
    });
    const pngBytes = Buffer.from(png.b64, "base64");
    const dl = await decodeInPage(page, pngBytes);
    const text = pngBytes.toString("latin1");
    check(
      "PNG download holds the image and its parameters",
      maxDiff(dl.rgba, last.rgba).max === 0 && text.includes("parameters") && text.includes(`Seed: ${INPUT.seed}`) &&
        (INPUT.eta === 0 || text.includes(`Eta: ${INPUT.eta}`)),
      png.name
    );
  } finally {
    await close();
  }
}

function matchesNative(tag, last, ref) {
  const sameSize = last.width === ref.width && last.height === ref.height && last.rgba.length === ref.rgba.length;
  const d = sameSize ? maxDiff(last.rgba, ref.rgba) : { max: Infinity, at: -1 };
  check(
    `${tag}: browser image matches the native CLI's within ${TOLERANCE}/255`,
    sameSize && d.max <= TOLERANCE,
    sameSize ? `max |diff| ${d.max}/255 (at byte ${d.at}) over ${last.width}x${last.height}` : `browser ${last.width}x${last.height}, native ${ref.width}x${ref.height}`
  );
}

// Reloads the page (same profile, so the same Cache Storage) and generates again with the form
// as it comes: the model must come from the cache, with no request to the Hub at all.
async function cachedReload(page, INPUT, hub, ref, coldFirstImage) {
  const tag = INPUT.model.split("/").pop();
  const before = hub.server.log.length;
  const t0 = Date.now();
  await page.reload();
  const tReady = await waitReady(page, tag, "again from the browser's cache", t0);
  if (tReady === null) return;
  const asked = hub.server.log.slice(before);
  const how = await page.evaluate(() => window.hoaLoad);
  check(
    `${tag}: a cached reload requests nothing from the model's server`,
    asked.length === 0 && how.how === "cached" && how.network === 0 && how.cached > 0,
    `${asked.length} request(s) ${JSON.stringify(asked.slice(0, 3))}; ${JSON.stringify(how)}`
  );
  await fillForm(page, INPUT);
  await page.click("#generate");
  await page.waitForSelector("body[data-state=done], body[data-state=failed]", { timeout: LIMIT_S * 1000 });
  const cachedFirstImage = Date.now() - t0;
  const last = await page.evaluate(() => window.hoaLast && { ...window.hoaLast, rgba: Array.from(window.hoaLast.rgba) });
  if (!last) return check(`${tag}: generates after a cached reload`, false, await page.textContent("#message"));
  console.log(`${tag}: time to first image from navigation: cold ${coldFirstImage} ms, cached ${cachedFirstImage} ms (ready in ${tReady} ms)`);
  matchesNative(`${tag} (cached)`, last, ref);
}

// Chromium with WebGPU switched off still has navigator.gpu, but no adapter; a browser without
// WebGPU at all has no navigator.gpu (simulated by hiding it before the page runs).
async function withoutWebGpu(base) {
  for (const [name, hide, want] of [
    ["no-adapter message shown (WebGPU disabled)", false, /no GPU adapter/],
    ["no-WebGPU message shown (navigator.gpu missing)", true, /has no WebGPU/],
  ]) {
    const { page, close } = await launch(NO_WEBGPU);
    try {
      logConsole(page, "no-webgpu");
      if (hide) await page.addInitScript(() => Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined }));
      await page.goto(`${base}/web/?model=${MODEL}`);
      await page.waitForSelector("body[data-state=error], body[data-state=ready]", { timeout: 120000 });
      const visible = await page.isVisible("#message");
      const text = (await page.textContent("#message")) || "";
      check(name, visible && want.test(text), JSON.stringify(text.slice(0, 90)));
      await page.screenshot({ path: join(out, hide ? "no-webgpu.png" : "no-adapter.png") });
    } finally {
      await close();
    }
  }
}

const server = await serve(repoRoot, 0);
const base = `http://127.0.0.1:${server.address().port}`;
// Another origin, as the Hub is to a page served elsewhere.
const hubServer = await serveHub({ "hoa/default": "weights/default" }, 0);
const hub = { server: hubServer, url: `http://127.0.0.1:${hubServer.address().port}` };
try {
  if (!existsSync(join(repoRoot, "web/pkg/hoa_bg.wasm"))) throw new Error("web/pkg is missing: run web/build.sh");
  for (const m of [MODEL, SHIPPED.model]) {
    execFileSync("bash", [join(repoRoot, "web/build.sh"), "--manifest", join(repoRoot, m)], { stdio: "inherit" });
  }
  for (const [name, f] of [
    ["with WebGPU", (b) => withWebGpu(b, INPUT, { full: true, shot: join(out, "tiny.png") })],
    ["shipped model", (b) => withWebGpu(b, SHIPPED, { full: false, shot: join(repoRoot, "web/screenshot.png"), hub })],
    ["without WebGPU", withoutWebGpu],
  ]) {
    try {
      await f(base);
    } catch (e) {
      check(name, false, e.stack || String(e));
    }
  }
} catch (e) {
  check("setup", false, e.message);
} finally {
  for (const s of [server, hubServer]) {
    s.close();
    s.closeAllConnections?.();
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
