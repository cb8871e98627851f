// Fetches a diffusers model folder from a URL into a Map<path, Uint8Array> for hoa.load(), and
// keeps it in the browser's Cache Storage so that a reload downloads nothing. Used by the Web
// Worker (web/worker.js); it never runs on the page's thread.
//
// A folder is listed by its files.json when the server has one (web/build.sh writes it), else
// discovered the way Hugging Face's `resolve/main/` layout must be: model_index.json first,
// then the files hoa's own download plan names (downloadPlan in src/download_plan.rs: the
// weight file names hoa tries, components it does not load skipped; then the prompt rewriter
// folder hoa.json names, rewriterPlan), probing candidates in order. The listing found is cached under LISTING beside the files.

const CACHE = "hoa-models-v1";
// A key that no server serves: the file list of a folder as it was found.
const LISTING = ".hoa-listing.json";

function httpError(url, r) {
  const why =
    r.status === 401 || r.status === 403
      ? " (the server wants a login or refuses: a gated or private model?)"
      : "";
  return new Error(`${url}: HTTP ${r.status}${why}`);
}

// Reads a response body, reporting bytes as they arrive.
async function readBody(r, onBytes) {
  if (!r.body) return new Uint8Array(await r.arrayBuffer());
  const chunks = [];
  let n = 0;
  const reader = r.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    n += value.length;
    onBytes(value.length);
  }
  const out = new Uint8Array(n);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

class Source {
  constructor(base, { useCache, onProgress }) {
    this.base = base;
    this.useCache = useCache;
    this.onProgress = onProgress || (() => {});
    this.cache = null;
    this.files = new Map();
    this.stats = { network: 0, cached: 0, bytes: 0, expected: 0 };
  }

  async open() {
    if (this.useCache && self.caches) {
      try {
        this.cache = await caches.open(CACHE);
      } catch {
        this.cache = null; // e.g. an opaque origin: work without it
      }
    }
  }

  progress(path) {
    this.onProgress({ ...this.stats, files: this.files.size, path });
  }

  // The bytes of `path` (relative to the folder), from the cache or the network; null for a
  // file the server does not have when `optional`.
  async get(path, optional) {
    const url = new URL(path, this.base).href;
    const hit = this.cache && (await this.cache.match(url));
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      this.stats.cached += 1;
      this.stats.bytes += bytes.length;
      this.stats.expected += bytes.length;
      this.progress(path);
      return bytes;
    }
    const r = await fetch(url, { cache: "no-store" });
    if (r.status === 404 && optional) return null;
    if (!r.ok) throw httpError(url, r);
    this.stats.network += 1;
    this.stats.expected += Number(r.headers.get("content-length") || 0);
    const bytes = await readBody(r, (n) => {
      this.stats.bytes += n;
      this.progress(path);
    });
    await this.put(url, bytes);
    return bytes;
  }

  async put(url, bytes) {
    if (!this.cache) return;
    try {
      await this.cache.put(url, new Response(bytes));
    } catch (e) {
      // Out of quota: the model still loads, it is just downloaded again next time.
      console.warn(`not cached: ${url}: ${e.message || e}`);
    }
  }

  async add(path, optional = false) {
    const bytes = await this.get(path, optional);
    if (bytes) this.files.set(path, bytes);
    return bytes;
  }

  // One plan step: the first candidate that exists; a sharded index brings its shards.
  async step(step) {
    for (const path of step.any) {
      const bytes = await this.add(path, true);
      if (!bytes) continue;
      if (step.weights && path.endsWith(".index.json")) {
        const dir = path.slice(0, path.lastIndexOf("/") + 1);
        const map = JSON.parse(new TextDecoder().decode(bytes)).weight_map || {};
        await Promise.all([...new Set(Object.values(map))].map((s) => this.add(dir + s)));
      }
      return;
    }
    if (step.required) {
      throw new Error(`${this.base} has none of ${step.any.join(", ")}`);
    }
  }

  // The folder's file list: cached, the server's files.json, or discovered through the plan.
  async list(plan, preferFp16, rewriterPlan) {
    const listing = new URL(LISTING, this.base).href;
    const hit = this.cache && (await this.cache.match(listing));
    if (hit) return { paths: await hit.json(), how: "cached" };
    const manifest = await this.get("files.json", true);
    if (manifest) return { paths: JSON.parse(new TextDecoder().decode(manifest)), how: "files.json" };
    const index = await this.add("model_index.json");
    const { steps, skipped } = JSON.parse(plan(new TextDecoder().decode(index), preferFp16));
    await Promise.all(steps.map((s) => this.step(s)));
    // Second stage: the prompt rewriter hoa.json names (rewriterPlan), if any.
    const hoa = this.files.get("hoa.json");
    if (hoa && rewriterPlan) {
      const more = JSON.parse(rewriterPlan(new TextDecoder().decode(hoa), preferFp16));
      await Promise.all(more.map((s) => this.step(s)));
    }
    return { paths: [...this.files.keys()].sort(), how: "discovered", skipped };
  }
}

/**
 * Fetches the model folder at `base` (a URL ending in "/"). `plan(modelIndexText, preferFp16)`
 * is hoa's downloadPlan, `rewriterPlan(hoaJsonText, preferFp16)` its second stage (the prompt
 * rewriter hoa.json names). Resolves to {files, stats, how, skipped}: stats.network counts the
 * files that came over the network, stats.cached those that came from Cache Storage.
 */
export async function fetchModel(
  base,
  { plan, rewriterPlan = null, preferFp16 = false, useCache = true, onProgress } = {}
) {
  const src = new Source(base, { useCache, onProgress });
  await src.open();
  const { paths, how, skipped = [] } = await src.list(plan, preferFp16, rewriterPlan);
  await Promise.all(paths.filter((p) => !src.files.has(p)).map((p) => src.add(p)));
  if (how !== "cached") {
    const body = JSON.stringify(paths);
    await src.put(new URL(LISTING, base).href, new TextEncoder().encode(body));
  }
  return { files: src.files, stats: src.stats, how, skipped };
}

/** Forgets every cached model. */
export async function clearCache() {
  if (self.caches) await caches.delete(CACHE);
}
