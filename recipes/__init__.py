"""Experiments over the medlm library: the demo and the papers' reproductions.

They sit outside ``medlm/`` (as torchtune's ``recipes/`` and NeMo's ``examples/``) and import it; nothing in
``medlm`` imports them. Their sizes are presets, YAML files in ``configs/presets/`` next to the job configs
(:mod:`recipes.presets`). Run them from the project root::

    python -m recipes.demo --preset real
    python -m recipes.reproduce run --preset real --workdir /tmp/repro-real
    python -m recipes.reproduce docs     # README.md's Evidence section from docs/reproductions/
"""
