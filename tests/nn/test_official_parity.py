"""Parity with the official TensorFlow networks (leekanggeun/ISCL ``models/network.py``).

``tests/fixtures/official_networks_small.npz`` holds the official Generator, Extractor and
Discriminator at small widths, their parameters in layer call order (already in torch layout) and
their outputs on fixed inputs, run in training mode (BIN batch statistics, as the official code always
does). Every iscl network, loaded with those parameters, must give the same outputs within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iscl.nn import Generator, NoiseExtractor, PatchDiscriminator

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_networks_small.npz"
BUILD = {"generator": lambda kw: Generator(1, kw["width"], kw["n_res"]),
         "extractor": lambda kw: NoiseExtractor(kw["width"], kw["n_layers"]),
         "discriminator": lambda kw: PatchDiscriminator(kw["width"])}


def _fixture():
    data = np.load(FIXTURE)
    return data, json.loads(str(data["meta"]))


def _load_in_call_order(net: torch.nn.Module, params: list[np.ndarray], example: torch.Tensor) -> None:
    """Copy ``params`` into ``net``'s modules in the order their forward is first called."""
    order: list[torch.nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _in: order.append(mod) if mod not in order else None)
             for m in net.modules() if list(m.parameters(recurse=False))]
    with torch.no_grad():
        net(example)
    for h in hooks:
        h.remove()
    mine = [p for m in order for p in m.parameters(recurse=False)]
    assert [tuple(p.shape) for p in mine] == [a.shape for a in params]
    with torch.no_grad():
        for p, a in zip(mine, params):
            p.copy_(torch.from_numpy(a))


@pytest.mark.parametrize("name", ["generator", "extractor", "discriminator"])
def test_networks_match_the_official_tensorflow_networks(name):
    data, meta = _fixture()
    spec = meta["nets"][name]
    net = BUILD[name](spec["iscl_kwargs"])
    params = [data[f"{name}/param/{p['i']:03d}"] for p in spec["params"]]
    assert sum(a.size for a in params) == spec["n_params"] == sum(p.numel() for p in net.parameters())
    first = spec["cases"][0]["case"]
    _load_in_call_order(net, params, torch.from_numpy(data[f"{name}/in/{first}"]))
    net.train()  # BIN always uses the current batch's statistics; train mode also avoids the in-place path
    for case in spec["cases"]:
        x = torch.from_numpy(data[f"{name}/in/{case['case']}"])
        expected = data[f"{name}/out/{case['case']}"]
        got = net(x).detach().numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0, err_msg=f"{name} {case['case']}")
        # the prediction path (no autograd: in-place BIN and leaky ReLU) gives the same numbers
        with torch.no_grad():
            np.testing.assert_allclose(net(x.clone()).numpy(), expected, atol=1e-4, rtol=0)
