"""The job configs: one YAML per job, and its variants.

    <job>.yaml          the default (`medlm train <job>`, `python ray_jobs/<job>.py`): tiny preset, CPU,
                        laptop-sized
    <job>_real.yaml     the same job on the real pretrained parts (preset `real`), CPU
    <job>_<env>.yaml    what the KubeRay job of environment <env> runs (infra/jobs.yaml,
                        infra/values/<env>.yaml): the default's recipe at cluster scale, sized for that
                        environment's GPU worker group (preset base, bf16, one GPU per Ray Train worker), data
                        and runs in that environment's bucket

An installed medlm ships this directory as the package ``medlm.configs`` (pyproject.toml: package-dir), so
``medlm.config`` finds the defaults through importlib.resources when no source tree is beside the package.
"""
