// The Web Worker that owns hoa: the wasm module, the WebGPU device, the model's download and
// its upload, and generation, so that the page's thread only paints. The page talks to it
// with messages {id, type, ...}; each request gets events {id, type: "event", event} while it
// runs and ends with {id, type: "done", result} or {id, type: "error", message}.
//   create                     -> {adapter}
//   load {url, name, preferFp16, useCache}
//                              -> {defaults, mb, how, network, cached, skipped}; events
//                                 {kind: "download", bytes, expected, files} and {kind: "upload"}
//   generate {request}         -> {rgba, png}; events as hoa.generate's onProgress
//   clearCache                 -> {}

import init, { Hoa, downloadPlan, rewriterPlan } from "./pkg/hoa.js";
import { clearCache, fetchModel } from "./model_source.js";

let hoa = null;

async function create() {
  await init();
  hoa = await Hoa.create();
  return { adapter: hoa.adapter() };
}

async function load({ url, name, preferFp16, useCache }, emit) {
  const { files, stats, how, skipped } = await fetchModel(url, {
    plan: downloadPlan,
    rewriterPlan,
    preferFp16,
    useCache,
    onProgress: (p) => emit({ kind: "download", bytes: p.bytes, expected: p.expected, files: p.files }),
  });
  const mb = [...files.values()].reduce((s, b) => s + b.length, 0) / 1e6;
  emit({ kind: "upload", mb });
  const defaults = JSON.parse(await hoa.load(name, files));
  return { defaults, mb, how, network: stats.network, cached: stats.cached, skipped };
}

async function generate({ request }, emit) {
  const rgba = await hoa.generate(request, (e) => emit(e));
  return { rgba, png: hoa.png() };
}

const handlers = { create, load, generate, clearCache: async () => (await clearCache(), {}) };

self.onmessage = async ({ data }) => {
  const { id, type } = data;
  const emit = (event) => {
    const transfer = event.rgba ? [event.rgba.buffer] : [];
    self.postMessage({ id, type: "event", event }, transfer);
  };
  try {
    if (!handlers[type]) throw new Error(`unknown request ${type}`);
    if (type !== "create" && type !== "clearCache" && !hoa) throw new Error("hoa is not started");
    const result = await handlers[type](data, emit);
    const transfer = [result.rgba?.buffer, result.png?.buffer].filter(Boolean);
    self.postMessage({ id, type: "done", result }, transfer);
  } catch (e) {
    self.postMessage({ id, type: "error", message: e.message || String(e) });
  }
};
