"""IP-Adapter for ComfyUI: image prompts for Stable Diffusion, tested against the reference.

ComfyUI loads this file; it only exposes the V3 entry point. Nothing is imported
or registered until ComfyUI calls `comfy_entrypoint`.
"""

async def comfy_entrypoint():
    from .nodes import IPAdapterExtension

    return IPAdapterExtension()
