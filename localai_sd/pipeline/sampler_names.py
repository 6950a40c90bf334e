"""Sampler names users bring from other tools, resolved to our (sampler, schedule) keys.

Our keys are k-diffusion's (``euler_a``, ``dpmpp_2m``, ...). AUTOMATIC1111 shows labels such as "Euler a" or,
before v1.9 split the scheduler out, "DPM++ 2M Karras": a label that names a schedule sets both. sd.cpp's
``--sampling-method`` names (``dpm++2m``, ``dpm++2s_a``) and its ``--scheduler`` names (``discrete``) are
accepted too. Matching ignores case and surrounding spaces.
"""

from __future__ import annotations

from dataclasses import dataclass

from localai_sd.errors import InvalidRequest
from localai_sd.pipeline.samplers import SAMPLER_LABELS, SAMPLERS, SCHEDULE_LABELS, SCHEDULES

#: sd.cpp ``--sampling-method`` values that are the same algorithm as one of ours.
SDCPP_SAMPLERS: dict[str, str] = {
    "euler": "euler",
    "euler_a": "euler_a",
    "heun": "heun",
    "dpm2": "dpm2",
    "dpm++2s_a": "dpmpp_2s_a",
    "dpm++2m": "dpmpp_2m",
    "lms": "lms",
    "lcm": "lcm",
}
#: Schedule names from A1111 ("Automatic" is the model's own) and sd.cpp (``discrete``).
SCHEDULE_ALIASES: dict[str, str] = {
    "uniform": "default",
    "automatic": "default",
    "discrete": "default",
    "normal": "default",
    "karras": "karras",
    "exponential": "exponential",
}


@dataclass(frozen=True)
class SamplerChoice:
    """A resolved sampler, and the schedule its name implied (None when it named none)."""

    sampler: str
    schedule: str | None = None


def _key(name: str) -> str:
    return " ".join(name.strip().lower().split())


def _table() -> dict[str, SamplerChoice]:
    """Every accepted spelling, lower-cased, to what it means."""
    table: dict[str, SamplerChoice] = {}
    for key in SAMPLERS:
        table[key] = SamplerChoice(key)
    for name, key in SDCPP_SAMPLERS.items():
        table[name] = SamplerChoice(key)
    for key, label in SAMPLER_LABELS.items():
        table[_key(label)] = SamplerChoice(key)
        for schedule, schedule_label in SCHEDULE_LABELS.items():
            if schedule != "default":  # "Euler a Uniform" is nobody's spelling
                table[_key(f"{label} {schedule_label}")] = SamplerChoice(key, schedule)
    return table


def resolve_sampler(name: str) -> SamplerChoice:
    """Our sampler for any accepted name; InvalidRequest naming the value and the choices otherwise."""
    choice = _table().get(_key(name)) if isinstance(name, str) else None
    if choice is None:
        raise InvalidRequest(
            f"sampler {name!r} is unknown; choose one of {', '.join(sorted(SAMPLERS))} "
            "(A1111 names such as 'Euler a' or 'DPM++ 2M Karras' work too; `local-ai samplers` lists them)",
            param="sampler",
        )
    return choice


def resolve_schedule(name: str) -> str:
    """Our schedule for a name of ours, A1111's or sd.cpp's; InvalidRequest otherwise."""
    key = _key(name) if isinstance(name, str) else ""
    if key in SCHEDULES:
        return key
    if key in SCHEDULE_ALIASES:
        return SCHEDULE_ALIASES[key]
    raise InvalidRequest(
        f"schedule {name!r} is unknown; choose one of {', '.join(sorted(SCHEDULES))}", param="schedule"
    )


def sampler_rows() -> list[tuple[str, str, str]]:
    """(our name, A1111 label, sd.cpp name) per sampler, for ``local-ai samplers``."""
    sdcpp = {key: name for name, key in SDCPP_SAMPLERS.items()}
    return [(key, SAMPLER_LABELS[key], sdcpp.get(key, "")) for key in SAMPLERS]
