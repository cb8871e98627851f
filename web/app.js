// The page: checks for WebGPU, loads the wasm build of hoa (pkg/, made by web/build.sh), fetches
// a diffusers model folder listed by its files.json, and generates on the GPU. Generation is
// async and waits for the GPU after every step, so the page keeps painting; progress and the
// live preview come through the onProgress callback.
//
// Query parameters: ?model=PATH_OR_URL (default weights/default; a relative path is resolved
// against the folder above web/, i.e. the repository root when it is the served folder).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const modelPath = params.get("model") || "weights/default";
const modelUrl = new URL(modelPath.replace(/\/?$/, "/"), new URL("../", location.href));
const modelName = modelPath.replace(/\/$/, "").split("/").pop() || "model";

function setState(s) {
  document.body.dataset.state = s;
}

function fail(text) {
  const m = $("message");
  m.textContent = text;
  m.hidden = false;
  $("status").textContent = "";
  $("generate").disabled = true;
  setState("error");
}

function status(text) {
  $("status").textContent = text;
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

// The folder's file list: files.json (written by web/build.sh: paths relative to the folder).
async function manifest() {
  const r = await fetch(new URL("files.json", modelUrl));
  if (!r.ok) {
    throw new Error(
      `the model folder ${modelUrl} has no files.json (HTTP ${r.status}); ` +
        "run web/build.sh, which writes one for weights/* and the test fixture, or " +
        "`web/build.sh --manifest DIR` for another folder"
    );
  }
  return await r.json();
}

async function loadModel(hoa) {
  const list = await manifest();
  const files = new Map();
  let done = 0;
  await Promise.all(
    list.map(async (path) => {
      files.set(path, await fetchBytes(new URL(path, modelUrl)));
      done += 1;
      status(`Downloading the model: ${done}/${list.length} files`);
      $("progress").value = done / list.length;
    })
  );
  const mb = [...files.values()].reduce((s, b) => s + b.length, 0) / 1e6;
  status(`Loading ${modelName} (${mb.toFixed(1)} MB) onto the GPU…`);
  await new Promise((r) => setTimeout(r, 0)); // paint the status before the synchronous upload
  // The model's defaults, resolved by hoa itself (hoa.json, scheduler, size): the page never
  // parses the model's files.
  const d = JSON.parse(await hoa.load(modelName, files));
  $("width").value = d.width;
  $("height").value = d.height;
  $("steps").value = d.steps;
  $("guidance").value = d.guidance;
  $("guidance-high").value = d.guidance_high ?? "";
  $("guidance-high-from").value = d.guidance_high_from;
  $("upsample").disabled = !d.upsampling;
  if (!d.consistency_decoder) {
    const opt = $("decoder").querySelector('option[value="consistency"]');
    opt.disabled = true;
    opt.textContent += " (not in this model)";
  }
  return mb;
}

function paint(canvas, rgba, w, h) {
  canvas.width = w;
  canvas.height = h;
  canvas.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(rgba), w, h), 0, 0);
}

async function main() {
  setState("starting");
  // 1. WebGPU at all? (Checked here too, before downloading anything.)
  if (!("gpu" in navigator) || !navigator.gpu) {
    return fail(
      "This browser has no WebGPU, which hoa needs to run on your GPU. Use a recent Chrome, " +
        "Edge or Safari (or Firefox with WebGPU enabled), on https or localhost."
    );
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (e) {
    adapter = null;
  }
  if (!adapter) {
    return fail(
      "WebGPU is present but no GPU adapter is available (requestAdapter returned null): " +
        "hardware acceleration may be off or the GPU is blocklisted."
    );
  }
  // 2. The wasm module and the device.
  status("Loading hoa…");
  let Hoa;
  try {
    const pkg = await import("./pkg/hoa.js");
    await pkg.default();
    Hoa = pkg.Hoa;
  } catch (e) {
    return fail(`Could not load the wasm build (web/pkg): ${e.message}. Run web/build.sh.`);
  }
  let hoa;
  try {
    hoa = await Hoa.create();
  } catch (e) {
    return fail(e.message || String(e));
  }
  // Browsers hide the adapter's name from wgpu; adapter.info has what they do tell.
  const i = adapter.info || {};
  const named = [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(" ");
  $("adapter").textContent = `GPU: ${named || "WebGPU adapter"}; ${hoa.adapter()}`;
  // 3. The model.
  try {
    const mb = await loadModel(hoa);
    status(`Ready: ${modelName} (${mb.toFixed(1)} MB).`);
  } catch (e) {
    return fail(`Could not load the model from ${modelUrl}: ${e.message || e}`);
  }
  window.hoaTimings = { ready: performance.now() };
  $("progress").value = 0;
  $("generate").disabled = false;
  setState("ready");

  let pngUrl = null;
  $("form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("generate").disabled = true;
    $("message").hidden = true;
    setState("generating");
    const steps = Number($("steps").value);
    const width = Number($("width").value);
    const height = Number($("height").value);
    $("progress").max = steps;
    $("progress").value = 0;
    const upsample = $("upsample").checked && !$("upsample").disabled;
    $("upsampled").textContent = "";
    // The form as a request; hoa resolves it (defaults, checks) as the CLI does.
    const request = {
      prompt: $("prompt").value,
      upsample,
      negative_prompt: $("negative").value,
      seed: Number($("seed").value || 0),
      steps,
      guidance: Number($("guidance").value),
      scheduler: $("scheduler").value || undefined,
      eta: Number($("eta").value),
      decoder: $("decoder").value,
      width,
      height,
      preview_every: Number($("preview-every").value),
    };
    if ($("guidance-high").value !== "") {
      request.guidance_high = Number($("guidance-high").value);
      request.guidance_high_from = Number($("guidance-high-from").value);
    }
    status("Encoding the prompt…");
    const t0 = performance.now();
    try {
      const rgba = await hoa.generate(JSON.stringify(request), (e) => {
        if (e.kind === "resolved") {
          const typed = $("prompt").value;
          $("upsampled").textContent = e.prompt === typed ? "" : `(the model reads: ${e.prompt})`;
        } else if (e.kind === "step") {
          $("progress").max = e.total;
          $("progress").value = e.step;
          status(`Step ${e.step}/${e.total}`);
        } else if (e.kind === "preview") {
          paint($("preview"), e.rgba, e.width, e.height);
          window.hoaPreviews = (window.hoaPreviews || 0) + 1;
          $("preview-caption").textContent = `live preview, step ${e.step}`;
        } else if (e.kind === "decoding") {
          status("Decoding…");
        } else if (e.kind === "warning") {
          status(`Warning: ${e.message}`);
        }
      });
      const ms = performance.now() - t0;
      paint($("preview"), rgba, width, height);
      $("preview-caption").textContent = "final";
      if (pngUrl) URL.revokeObjectURL(pngUrl);
      pngUrl = URL.createObjectURL(new Blob([hoa.png()], { type: "image/png" }));
      const img = $("result");
      await new Promise((resolve) => {
        img.onload = resolve;
        img.src = pngUrl;
        img.hidden = false;
      });
      $("download").href = pngUrl;
      $("download").download = `hoa-${$("seed").value}.png`;
      $("download").hidden = false;
      $("timing").textContent = `${width}x${height}, ${steps} steps in ${(ms / 1000).toFixed(1)} s`;
      status("Done.");
      window.hoaLast = { rgba, width, height, ms };
      window.hoaTimings.firstImage ??= performance.now();
      setState("done");
    } catch (e) {
      const m = $("message");
      m.textContent = e.message || String(e);
      m.hidden = false;
      status("");
      setState("failed");
    } finally {
      $("generate").disabled = false;
    }
  });
}

main();
