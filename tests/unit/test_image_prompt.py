"""The image prompt value refuses tokens that would turn every sampled image into NaN."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.ip_adapter.errors import ImagePromptError
from ipadapter_pack.ip_adapter.prompt import ImagePrompt
from ipadapter_pack.ip_adapter.state_dict import detect_spec
from support import checkpoints

SPEC = detect_spec(checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small"), "sd15")


@pytest.mark.parametrize("row", ["cond", "uncond"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tokens_are_refused_with_the_fix(row: str, value: float) -> None:
    tokens = {"cond": torch.rand(1, 4, 768), "uncond": torch.zeros(1, 4, 768)}
    tokens[row][0, 2, 5] = value
    with pytest.raises(ImagePromptError, match=rf"{row} tokens contain NaN or infinity\. Encode the reference "
                                               r"image again .* damaged"):
        ImagePrompt(cond=tokens["cond"], uncond=tokens["uncond"], spec=SPEC)


def test_finite_tokens_make_a_prompt() -> None:
    prompt = ImagePrompt(cond=torch.rand(1, 4, 768), uncond=torch.zeros(1, 4, 768), spec=SPEC)
    assert prompt.tokens == 4
