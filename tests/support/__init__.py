"""Test-data builders shared by unit and integration tests.

Everything here is pure torch + safetensors and never imports ComfyUI or the pack
under test: the builders encode the *published* file formats independently, so a
test that loads them checks the pack against the real layouts rather than against
the pack's own idea of them. Import modules as `support.checkpoints`,
`support.clip_vision_files` (a conftest puts `tests/` on `sys.path`).
"""
