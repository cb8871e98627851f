// A tiny static file server for the page (no dependencies): serves the repository root on
// 127.0.0.1, so that /web/ is the page and /weights/default/ or /tests/fixtures/... the models.
//   node web/serve.mjs [port]        then open http://127.0.0.1:8000/web/
import { createServer } from "node:http";
import { readFile, stat } from "node:fs/promises";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".png": "image/png",
};

export const repoRoot = resolve(fileURLToPath(new URL("..", import.meta.url)));

/** Serves `root` on 127.0.0.1:`port` (0: any free port); resolves to the listening server. */
export function serve(root = repoRoot, port = 0) {
  const server = createServer(async (req, res) => {
    try {
      const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
      let file = normalize(join(root, path));
      if (file !== root && !file.startsWith(root + sep)) {
        res.writeHead(403).end("forbidden");
        return;
      }
      if ((await stat(file)).isDirectory()) file = join(file, "index.html");
      const body = await readFile(file);
      res.writeHead(200, {
        "content-type": TYPES[extname(file)] || "application/octet-stream",
        "cache-control": "no-store",
      });
      res.end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  return new Promise((ok, err) => {
    server.once("error", err);
    server.listen(port, "127.0.0.1", () => ok(server));
  });
}

/**
 * A stand-in for Hugging Face's file server on 127.0.0.1:`port`: GET
 * /ORG/REPO/resolve/main/PATH serves PATH of the folder `repos["ORG/REPO"]` (relative to the
 * repository root), with CORS for any origin as the Hub sends it. Like the Hub it has no
 * files.json, so the page must discover the files. `server.log` lists the paths requested.
 */
export function serveHub(repos, port = 0) {
  const log = [];
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    log.push(path);
    const cors = { "access-control-allow-origin": "*" };
    const m = path.match(/^\/([^/]+\/[^/]+)\/resolve\/main\/(.+)$/);
    const dir = m && repos[m[1]] && resolve(repoRoot, repos[m[1]]);
    const file = dir && normalize(join(dir, m[2]));
    if (!file || !file.startsWith(dir + sep) || m[2].endsWith("files.json")) {
      res.writeHead(404, cors).end("Entry not found");
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { ...cors, "content-type": TYPES[extname(file)] || "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404, cors).end("Entry not found");
    }
  });
  server.log = log;
  return new Promise((ok, err) => {
    server.once("error", err);
    server.listen(port, "127.0.0.1", () => ok(server));
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const server = await serve(repoRoot, Number(process.argv[2] || 8000));
  console.log(`serving ${repoRoot} at http://127.0.0.1:${server.address().port}/web/`);
}
