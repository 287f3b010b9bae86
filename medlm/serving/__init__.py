"""Ray Serve deployments (SpeechEncoder, LLM, CTRetriever) behind an OpenAI-compatible FastAPI ingress::

from medlm.serving import run_local

url = run_local(model_dir=None, port=8000, api_key=key)  # on the connected (local) Ray
openai.OpenAI(base_url=url, api_key=key).chat.completions.create(model="medlm", messages=[...])
"""

from medlm.serving.app import build_app, run_local
from medlm.serving.config import AppArgs, BatchOptions, Limits
from medlm.serving.defaults import default_ct_index_dir, default_model_dir

__all__ = [
    "AppArgs",
    "BatchOptions",
    "Limits",
    "build_app",
    "default_ct_index_dir",
    "default_model_dir",
    "run_local",
]
