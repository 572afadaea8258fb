"""Attention kernels: chosen by CUDA capability, loaded offline, verified against SDPA, reported per process.

    specs.py      the kernels we know (repo, version, published CUDA archs); no torch, read by config and bake
    policy.py     pure: system facts + which builds are baked + override -> ordered candidates with reasons
    loading.py    finds and imports baked builds with `kernels`, never touching the network
    functions.py  every backend as one function in the kernels' layout; real shapes; verification vs math SDPA
    autotune.py   optional timing of verified candidates, cached on disk per GPU and versions
    manager.py    start-up orchestration: select once, describe
    bake.py       image build step: downloads the builds matching the image's torch/CUDA

This file imports nothing so that the image build can run `python -m worker.attention.bake` with only
specs.py and bake.py copied in (its layer then survives changes to the rest of the worker).
"""
