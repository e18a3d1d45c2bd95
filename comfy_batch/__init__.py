"""Queue batches of an API-format ComfyUI workflow through ComfyUI's HTTP API.

`python -m comfy_batch` (or the `comfy-ipadapter-batch` command) substitutes reference images,
seeds, weights, prompts or any node input into a workflow, as a grid or a CSV/JSONL list,
queues each item with `POST /prompt`, follows it over the websocket, downloads the images and
writes a manifest that makes an interrupted batch resumable.

Modules, one job each: `plan` (addresses and items; pure), `client` (HTTP with retries),
`progress` (websocket events), `manifest` (the results file), `runner` (one item end to end),
`scoring` (optional CLIP-I/CLIP-T; the only module that needs torch), `cli` (arguments).
Dependencies are what ComfyUI's own environment has: aiohttp and tqdm.
"""

__version__ = "0.1.0"
