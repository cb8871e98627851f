// The page: checks for WebGPU, then hands everything else to a Web Worker (web/worker.js): the
// wasm build of hoa (pkg/, made by web/build.sh), the download of a diffusers model folder
// (web/model_source.js: a files.json listing or Hugging Face's resolve/main layout, kept in
// Cache Storage so that a reload downloads nothing), the upload and generation on the GPU. The
// page's thread only paints progress, the live preview and the result.
//
// Query parameters: ?model=PATH_OR_URL (default weights/default; a relative path is resolved
// against the folder above web/, i.e. the repository root when it is the served folder;
// `hf:ORG/REPO` is https://huggingface.co/ORG/REPO/resolve/main/), &variant=fp16 (download the
// .fp16 weights when a folder has both), &nocache=1 (neither read nor fill the cache).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const modelPath = (params.get("model") || "weights/default").replace(
  /^hf:([^/]+\/[^/]+?)\/?$/,
  "https://huggingface.co/$1/resolve/main/"
);
const modelUrl = new URL(modelPath.replace(/\/?$/, "/"), new URL("../", location.href));
// ".../ORG/REPO/resolve/main/" is named REPO; other folders by their last segment.
const modelName =
  modelUrl.pathname.match(/\/([^/]+)\/resolve\/[^/]+\/$/)?.[1] ||
  modelUrl.pathname.replace(/\/$/, "").split("/").pop() ||
  "model";

// The worker and a promise per request.
const worker = new Worker(new URL("worker.js", import.meta.url), { type: "module" });
const pending = new Map();
let nextId = 0;
worker.onmessage = ({ data }) => {
  const p = pending.get(data.id);
  if (!p) return;
  if (data.type === "event") return p.onEvent(data.event);
  pending.delete(data.id);
  if (data.type === "done") p.resolve(data.result);
  else p.reject(new Error(data.message));
};
worker.onerror = (e) => {
  for (const p of pending.values()) p.reject(new Error(`the worker failed: ${e.message}`));
  pending.clear();
};
function call(type, payload = {}, onEvent = () => {}) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onEvent });
    worker.postMessage({ id, type, ...payload });
  });
}

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

const MB = (n) => (n / 1e6).toFixed(1);

async function loadModel() {
  const r = await call(
    "load",
    {
      url: modelUrl.href,
      name: modelName,
      preferFp16: params.get("variant") === "fp16",
      useCache: params.get("nocache") !== "1",
    },
    (e) => {
      if (e.kind === "download") {
        const of = e.expected > e.bytes ? ` of ${MB(e.expected)}` : "";
        status(`Downloading ${modelName}: ${MB(e.bytes)}${of} MB (${e.files} files)`);
        $("progress").value = e.expected ? e.bytes / e.expected : 0;
      } else if (e.kind === "upload") {
        status(`Loading ${modelName} (${MB(e.mb * 1e6)} MB) onto the GPU…`);
      }
    }
  );
  window.hoaLoad = { how: r.how, network: r.network, cached: r.cached, skipped: r.skipped };
  // The model's defaults, resolved by hoa itself (hoa.json, scheduler, size): the page never
  // parses the model's files.
  const d = r.defaults;
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
  return { mb: r.mb, from: r.network ? "downloaded" : "from the browser's cache", dtype: d.dtype };
}

function paint(canvas, rgba, w, h) {
  canvas.width = w;
  canvas.height = h;
  canvas.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(rgba), w, h), 0, 0);
}

$("clear-cache").addEventListener("click", async () => {
  try {
    await call("clearCache");
    status("Forgot the downloaded models: the next load downloads them again.");
  } catch (e) {
    status(`Could not clear the cache: ${e.message || e}`);
  }
});

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
  // 2. The wasm module and the device, in the worker.
  status("Loading hoa…");
  let created;
  try {
    created = await call("create");
  } catch (e) {
    const m = e.message || String(e);
    return fail(/pkg|import|wasm/i.test(m) ? `Could not load the wasm build (web/pkg): ${m}. Run web/build.sh.` : m);
  }
  // Browsers hide the adapter's name from wgpu; adapter.info has what they do tell.
  const i = adapter.info || {};
  const named = [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(" ");
  $("adapter").textContent = `GPU: ${named || "WebGPU adapter"}; ${created.adapter}`;
  // 3. The model.
  try {
    const m = await loadModel();
    status(`Ready: ${modelName} (${m.mb.toFixed(1)} MB, ${m.from}, ${m.dtype}).`);
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
      const { rgba, png } = await call("generate", { request: JSON.stringify(request) }, (e) => {
        if (e.kind === "resolved") {
          const typed = $("prompt").value;
          // Resolving is instant; with upsampling on, this is the rewriter's time (from the click).
          const rewriteMs = performance.now() - t0;
          window.hoaLastRewriteMs = upsample ? rewriteMs : null;
          const took = upsample ? `; rewritten in ${Math.round(rewriteMs)} ms` : "";
          $("upsampled").textContent = e.prompt === typed ? "" : `(the model reads: ${e.prompt}${took})`;
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
      pngUrl = URL.createObjectURL(new Blob([png], { type: "image/png" }));
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
