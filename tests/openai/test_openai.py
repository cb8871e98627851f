"""`hoa serve` driven by the official `openai` Python package (version pinned in
tests/openai/requirements.txt), against the shipped model in weights/default, with
max_retries=0 so that no retry hides an error. Run by .ci/run:

    python3 tests/openai/test_openai.py [path/to/hoa]

Prints one line per test and, last, `N passed, M failed`; exits 1 when any failed.
"""

import base64
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import zlib

import openai
from openai import OpenAI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOA = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "hoa")
KEY = "sk-hoa-test-key"
# Tiny and quick: 64x64 (the model's own size), a few steps.
SIZE = "64x64"


def png(w, h, pixel):
    """A PNG of w x h pixels; pixel(x, y) gives RGB or RGBA bytes."""
    first = pixel(0, 0)
    color = {3: 2, 4: 6}[len(first)]
    rows = b"".join(b"\x00" + b"".join(pixel(x, y) for x in range(w)) for y in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def image():
    return png(64, 64, lambda x, y: bytes((x * 4, y * 4, 128)))


def mask():
    """OpenAI's mask: transparent = the area to edit (here the left half)."""
    return png(64, 64, lambda x, y: bytes((0, 0, 0, 0 if x < 32 else 255)))


class Server:
    def __init__(self, *extra):
        self.keys = tempfile.NamedTemporaryFile("w", suffix=".keys", delete=False)
        self.keys.write(KEY + "\n")
        self.keys.close()
        self.data = tempfile.mkdtemp(prefix="hoa-openai-test-")
        cmd = [HOA, "serve", "--model", "default=" + os.path.join(ROOT, "weights", "default"),
               "--bind", "127.0.0.1:0", "--api-key-file", self.keys.name,
               "--data-dir", self.data, *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line.startswith("listening on http://"), f"hoa serve said {line!r}"
        self.base = line.removeprefix("listening on ")

    def client(self, key=KEY, **kw):
        return OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, **kw)

    def metrics(self):
        req = urllib.request.Request(self.base + "/metrics",
                                     headers={"Authorization": "Bearer " + KEY})
        text = urllib.request.urlopen(req).read().decode()
        return {l.split(" ")[0]: float(l.split(" ")[1]) for l in text.splitlines()
                if l and not l.startswith("#")}

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.unlink(self.keys.name)
        for f in os.listdir(self.data):
            os.unlink(os.path.join(self.data, f))
        os.rmdir(self.data)


def test_models_list(s):
    models = s.client().models.list()
    assert [m.id for m in models.data] == ["default"], models


def test_generations_b64_json(s):
    r = s.client().images.generate(model="default", prompt="a red circle", size=SIZE, n=2,
                                   extra_body={"steps": 2, "seed": 7})
    assert len(r.data) == 2, r
    for d in r.data:
        assert png_size(base64.b64decode(d.b64_json)) == (64, 64)
        # The shipped model rewrites short prompts, as DALL-E 3 does.
        assert "red circle" in d.revised_prompt, d.revised_prompt
    assert r.data[0].b64_json != r.data[1].b64_json, "image k is seeded seed + k"
    assert r.created > 0 and r.usage is not None


def test_generations_url(s):
    c = s.client()
    args = dict(model="default", prompt="a blue square", size=SIZE,
                extra_body={"steps": 2, "seed": 11})
    by_url = c.images.generate(response_format="url", **args)
    url = by_url.data[0].url
    assert url.startswith(s.base + "/v1/files/images/"), url
    fetched = urllib.request.urlopen(url).read()
    inline = base64.b64decode(c.images.generate(**args).data[0].b64_json)
    assert fetched == inline, "the link serves the PNG b64_json gives"


def test_streaming_events_in_order(s):
    stream = s.client().images.generate(model="default", prompt="a green star", size=SIZE,
                                        stream=True, partial_images=2,
                                        extra_body={"steps": 6, "seed": 2})
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for e in events:
        assert png_size(base64.b64decode(e.b64_json)) == (64, 64)
    assert events[-1].usage is not None


def test_edits_with_a_mask(s):
    c = s.client()
    args = dict(model="default", prompt="a yellow triangle", size=SIZE,
                extra_body={"steps": 4, "seed": 3})
    img = ("image.png", image(), "image/png")
    plain = c.images.edit(image=img, **args)
    masked = c.images.edit(image=img, mask=("mask.png", mask(), "image/png"), **args)
    for r in (plain, masked):
        assert png_size(base64.b64decode(r.data[0].b64_json)) == (64, 64)
    assert plain.data[0].b64_json != masked.data[0].b64_json, "the mask changes the edit"
    # A mask without alpha is refused, naming it.
    opaque = png(64, 64, lambda x, y: bytes((255, 255, 255)))
    try:
        c.images.edit(image=img, mask=("mask.png", opaque, "image/png"), **args)
        raise AssertionError("an opaque mask was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == "mask", e


def test_variations(s):
    # The client marks the route deprecated (OpenAI retired it); hoa serves it.
    r = s.client().images.create_variation(model="default", image=("image.png", image(), "image/png"),
                                           n=1, size=SIZE, extra_body={"steps": 2})
    assert png_size(base64.b64decode(r.data[0].b64_json)) == (64, 64)


def test_bad_size_is_a_400_naming_size(s):
    for size in ("63x64", "huge", "16384x16384"):
        try:
            s.client().images.generate(model="default", prompt="a", size=size)
            raise AssertionError(f"size {size} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.param == "size", (size, e)
            assert e.type == "invalid_request_error", e


def test_missing_or_wrong_key_is_a_401(s):
    # No Authorization header at all (the client would not start without a key), then a wrong one.
    for key, headers in ((KEY, {"Authorization": openai.omit}), ("sk-wrong", None)):
        try:
            s.client(key=key).images.generate(model="default", prompt="a", size=SIZE,
                                              extra_headers=headers)
            raise AssertionError(f"key {key!r} with {headers} was accepted")
        except openai.AuthenticationError as e:
            assert e.status_code == 401 and e.code == "invalid_api_key", e


def test_full_queue_is_a_429_with_retry_after(s):
    """--queue 1: one job runs, one waits, the next is refused. The two long ones are given up
    by their clients (a timeout), which stops them on the server."""
    def long_request():
        try:
            s.client(timeout=15).images.generate(model="default", prompt="a", size=SIZE,
                                                 extra_body={"steps": 500})
        except openai.APITimeoutError:
            pass

    def wait_for(pred, what):
        deadline = time.time() + 60
        while not pred(s.metrics()):
            assert time.time() < deadline, f"never {what}: {s.metrics()}"
            time.sleep(0.1)

    threads = []
    for depth in (0, 1):
        t = threading.Thread(target=long_request)
        t.start()
        threads.append(t)
        wait_for(lambda m: m["hoa_requests_in_flight"] == depth + 1
                 and m["hoa_queue_depth"] == depth, f"{depth + 1} in flight")
    try:
        s.client().images.generate(model="default", prompt="a", size=SIZE)
        raise AssertionError("a full queue took another job")
    except openai.RateLimitError as e:
        assert e.status_code == 429, e
        assert int(e.response.headers["retry-after"]) >= 1, e.response.headers
    for t in threads:
        t.join()
    wait_for(lambda m: m["hoa_requests_in_flight"] == 0, "drained")


def main():
    tests = [(k, v) for k, v in globals().items() if k.startswith("test_")]
    print(f"openai {openai.__version__}; hoa serve from {HOA}")
    s = Server("--queue", "1")
    passed = failed = 0
    try:
        for name, test in tests:
            t = time.time()
            try:
                test(s)
                passed += 1
                print(f"test {name} ... ok ({time.time() - t:.1f} s)", flush=True)
            except Exception:
                failed += 1
                print(f"test {name} ... FAILED", flush=True)
                traceback.print_exc()
            if s.proc.poll() is not None:
                print(f"the server exited ({s.proc.returncode}) during {name}")
                failed += 1
                break
    finally:
        s.close()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
