"""The API's own metrics, exported through Ray's metrics pipeline (``ray.serve.metrics``).

Every replica records into Ray's metrics (Serve adds the ``deployment``, ``replica`` and ``application``
tags); each node's Ray metrics agent exports the series of every replica on it at
``http://<node>:<metrics export port>/metrics`` (the port Prometheus scrapes on a Ray cluster: 8080 in the
KubeRay pods; locally ``ray.nodes()[i]["MetricsExportPort"]``), under Ray's prefix ``ray_``. Sum over
``replica`` for the app's totals (PromQL ``sum by (route, status) (ray_medlm_requests_total)``).

    ray_medlm_requests_total{route, status}    HTTP requests answered by the ingress (route "other" for
                                               unknown paths)
    ray_medlm_audio_seconds_total              seconds of audio decoded from requests
    ray_medlm_completion_tokens_total{model}   tokens generated, by the model id of the request
    ray_medlm_screened_turns_total{result, modality}  patient turns screened (result emergency | harmful |
                                               none; modality text | audio | mixed)
    ray_medlm_screen_failures_total            turns that went on unscreened because the screen failed
    ray_medlm_batch_size{deployment}           rows per batch: per ``@serve.batch`` call (SpeechEncoder,
                                               WhisperTranscriber, Speaker), per decode step (LLM)

Tags are route templates, status codes, model ids and deployment names: never anything a client sent as
content (no transcripts, no audio, no text).
"""

from __future__ import annotations

BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64]


class IngressMetrics:
    """The ingress replica's request, audio and token counters."""

    def __init__(self):
        from ray.serve.metrics import Counter

        self.requests = Counter(
            "medlm_requests",
            description="HTTP requests answered by the medlm ingress",
            tag_keys=("route", "status"),
        )
        self.audio_seconds = Counter(
            "medlm_audio_seconds", description="Seconds of audio decoded from requests"
        )
        self.completion_tokens = Counter(
            "medlm_completion_tokens", description="Completion tokens generated", tag_keys=("model",)
        )

        self.screened_turns = Counter(
            "medlm_screened_turns",
            description="Patient turns screened by the safety screen",
            tag_keys=("result", "modality"),
        )
        self.screen_failures = Counter(
            "medlm_screen_failures", description="Turns that went on unscreened because the screen failed"
        )

    def screened(self, result: str, modality: str) -> None:
        self.screened_turns.inc(1, {"result": result, "modality": modality})

    def screen_failure(self) -> None:
        self.screen_failures.inc(1)

    def request(self, route: str, status: int) -> None:
        self.requests.inc(1, {"route": route, "status": str(status)})

    def audio(self, seconds: float) -> None:
        if seconds > 0:
            self.audio_seconds.inc(seconds)

    def tokens(self, model: str, n: int) -> None:
        if n > 0:
            self.completion_tokens.inc(n, {"model": model})


def batch_size_histogram():
    """Rows per batch of this deployment's replica (``observe(n)``)."""
    from ray.serve.metrics import Histogram

    return Histogram(
        "medlm_batch_size",
        description="Rows per batch (per decode step for the LLM)",
        boundaries=BATCH_SIZE_BUCKETS,
    )
