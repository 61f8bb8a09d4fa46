"""The hidden clinical process of one admission: latent findings evolving hour by hour under treatment.

Treatments are decided from the current state (as a clinician would) and then change it by the sizes in
`effects` times `effect_strength`; vitals and labs are noisy functions of the state. A state-driven choice
is partly predictable from the previous image, so `randomized` turns a share of the drug and fluid
decisions into coin flips: then the events between two images tell what the previous image cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import TreatmentEffects

FINDINGS: tuple[str, ...] = (
    "pleural_effusion",
    "edema",
    "consolidation",
    "cardiomegaly",
    "atelectasis",
    "pneumothorax",
    "support_devices",
)
EF, ED, CO, CM, AT, PX, SD = range(len(FINDINGS))

ROUND_HOURS = 4  # clinicians reassess every 4 h
DIURETIC_HOURS = 6.0  # a furosemide dose acts for ~6 h
FLUID_HOURS = 3.0
# per-round probability of each decision when it is randomised (not drawn from the state)
RANDOM_RATE = {"furosemide": 0.25, "fluids": 0.2, "antibiotic_start": 0.15, "antibiotic_stop": 0.1}


@dataclass
class Treatment:
    """One treatment decision, `hour` after admittime; `kind` names what was done."""

    hour: float
    # furosemide | fluids | antibiotic_start | antibiotic_dose | intubation | extubation | chest_tube |
    # central_line | tobramycin
    kind: str
    detail: int = 0  # antibiotic course index, amount, ...


@dataclass
class Course:
    """The simulated admission: hourly latent state (hours+1, 7) and the treatment log."""

    hours: int
    state: np.ndarray
    intubated: np.ndarray  # bool (hours+1,)
    chest_tube: np.ndarray  # bool (hours+1,)
    diuretic: np.ndarray  # float (hours+1,) 1 while a diuretic dose acts
    on_abx: np.ndarray  # bool (hours+1,)
    central_line: np.ndarray  # bool (hours+1,)
    infected: bool
    organism: int
    abx_course: int
    treatments: list[Treatment] = field(default_factory=list)


def initial_state(rng: np.random.Generator, cardiomegaly: float) -> tuple[np.ndarray, bool]:
    """Draw the presentation (heart failure, pneumonia, pneumothorax, mixed, mild) at admission."""
    s = np.zeros(len(FINDINGS))
    s[CM] = cardiomegaly
    kind = rng.choice(5, p=[0.32, 0.32, 0.1, 0.12, 0.14])
    u = rng.random(8)
    if kind == 0:  # decompensated heart failure
        s[ED], s[EF], s[CO] = 0.45 + 0.45 * u[0], 0.3 + 0.5 * u[1], 0.1 * u[2]
    elif kind == 1:  # pneumonia
        s[CO], s[EF], s[ED] = 0.45 + 0.5 * u[0], 0.35 * u[1], 0.15 * u[2]
    elif kind == 2:  # pneumothorax
        s[PX], s[EF], s[ED] = 0.45 + 0.45 * u[0], 0.15 * u[1], 0.1 * u[2]
    elif kind == 3:  # mixed
        s[ED], s[CO], s[EF] = 0.25 + 0.4 * u[0], 0.25 + 0.45 * u[1], 0.2 + 0.4 * u[2]
    else:  # mild
        s[ED], s[CO], s[EF] = 0.2 * u[0], 0.2 * u[1], 0.2 * u[2]
    s[AT] = 0.45 * u[3] ** 2
    infected = bool(s[CO] > 0.3)
    return np.clip(s, 0.0, 1.0), infected


def respiratory_load(state: np.ndarray) -> np.ndarray:
    """How much the findings impair gas exchange (drives SpO2, RR, pO2, intubation)."""
    return (
        0.45 * state[..., ED]
        + 0.5 * state[..., CO]
        + 0.3 * state[..., EF]
        + 0.6 * state[..., PX]
        + 0.2 * state[..., AT]
    )


def simulate_course(
    rng: np.random.Generator,
    hours: int,
    icu: tuple[float, float] | None,
    initial: np.ndarray,
    infected: bool,
    effect_strength: float,
    effects: TreatmentEffects | None = None,
    randomized: float = 0.0,
) -> Course:
    """Evolve the findings hour by hour; treatments are chosen every ROUND_HOURS from the state.

    With probability `randomized`, each round's diuretic, fluid and antibiotic decision is instead a coin
    flip at RANDOM_RATE. Those draws come from a child generator, so `rng` advances the same for any
    `randomized`, and `randomized=0` is the purely state-driven clinician.
    """
    eff = float(effect_strength)
    fx = effects or TreatmentEffects()
    noise = rng.normal(0.0, 0.012, size=(hours, len(FINDINGS)))
    u = rng.random((hours, 10))
    organism = int(rng.integers(0, 5))
    abx_course = int(rng.integers(0, 3))
    chf = float(initial[CM] > 0.5 or initial[ED] > 0.45)  # prone to fluid overload
    trial = rng.spawn(1)[0]  # spawning does not advance `rng`
    # per round: (is each of diuretic / fluids / antibiotics randomised?, its coin flip)
    n_rounds = hours // ROUND_HOURS + 1
    rand = trial.random((n_rounds, 3)) < randomized
    coin = trial.random((n_rounds, 3))

    state = np.empty((hours + 1, len(FINDINGS)))
    intub = np.zeros(hours + 1, bool)
    tube = np.zeros(hours + 1, bool)
    diur = np.zeros(hours + 1)
    abx = np.zeros(hours + 1, bool)
    line = np.zeros(hours + 1, bool)
    log: list[Treatment] = []

    s = [float(x) for x in initial]
    last_diuretic = last_fluid = -1e9
    is_intub = has_tube = on_abx = has_line = False
    intub_since = tube_since = abx_since = next_dose = 0.0
    for h in range(hours):
        in_icu = icu is not None and icu[0] <= h < icu[1]
        uh = u[h]
        if h % ROUND_HOURS == 0:
            r = h // ROUND_HOURS
            t = h + uh[9] * ROUND_HOURS * 0.9  # decision time within the round
            resp = 0.45 * s[ED] + 0.5 * s[CO] + 0.3 * s[EF] + 0.6 * s[PX] + 0.2 * s[AT]
            if rand[r, 0]:
                give = coin[r, 0] < RANDOM_RATE["furosemide"]
            else:
                give = ((s[ED] > 0.4 or s[EF] > 0.5) and uh[0] < 0.5) or uh[0] < 0.03
            if give:
                log.append(Treatment(t, "furosemide", 40 if uh[1] < 0.7 else 80))
                last_diuretic = t
            if rand[r, 1]:
                give = coin[r, 1] < RANDOM_RATE["fluids"]
            else:
                give = s[ED] < 0.55 and ((s[CO] > 0.4 and uh[2] < 0.3) or uh[2] < 0.05)
            if give:
                log.append(Treatment(t, "fluids", 500 if uh[3] < 0.5 else 1000))
                last_fluid = t
            if not on_abx:
                if rand[r, 2]:
                    start = coin[r, 2] < RANDOM_RATE["antibiotic_start"]
                else:
                    start = infected and s[CO] > 0.25 and uh[4] < 0.6
                if start:
                    on_abx, abx_since, next_dose = True, t, t
                    log.append(Treatment(t, "antibiotic_start", abx_course))
                    if uh[3] < 0.08:
                        log.append(Treatment(t, "tobramycin"))
            elif rand[r, 2]:
                on_abx = not (h - abx_since > 24 and coin[r, 2] < RANDOM_RATE["antibiotic_stop"])
            elif h - abx_since > 48 and (s[CO] < 0.08 or h - abx_since > 168):
                on_abx = False
            if in_icu and not has_line and uh[5] < 0.3:
                has_line = True
                log.append(Treatment(t, "central_line"))
                if uh[6] < 0.08:
                    s[PX] = min(1.0, s[PX] + 0.45)  # iatrogenic pneumothorax
            if in_icu and not is_intub and resp > 0.65 and uh[6] < 0.45:
                is_intub, intub_since = True, t
                log.append(Treatment(t, "intubation"))
            elif is_intub and h - intub_since > 12 and resp < 0.35 and uh[6] < 0.5:
                is_intub = False
                log.append(Treatment(t, "extubation"))
            if in_icu and not has_tube and (s[PX] > 0.3 and uh[7] < 0.7 or s[EF] > 0.75 and uh[7] < 0.15):
                has_tube, tube_since = True, t
                log.append(Treatment(t, "chest_tube"))
            elif has_tube and h - tube_since > 36 and s[PX] < 0.05 and s[EF] < 0.35:
                has_tube = False
        if on_abx and h >= next_dose:
            log.append(Treatment(max(float(h), next_dose), "antibiotic_dose", abx_course))
            next_dose += (24.0, 12.0, 8.0)[abx_course]
        if not in_icu and (is_intub or has_tube):  # devices only exist in the ICU
            is_intub = has_tube = False

        d_act = 1.0 if 0 <= h - last_diuretic < DIURETIC_HOURS else 0.0
        f_act = 1.0 if 0 <= h - last_fluid < FLUID_HOURS else 0.0
        state[h] = s
        intub[h], tube[h], diur[h], abx[h], line[h] = is_intub, has_tube, d_act, on_abx, has_line

        n = noise[h]
        s[ED] += -fx.diuretic_edema * eff * d_act + fx.fluids_edema * eff * f_act + 0.006 * chf - 0.002 + n[ED]
        s[EF] += (
            -fx.diuretic_effusion * eff * d_act
            + fx.fluids_effusion * eff * f_act
            + 0.003 * (s[ED] - 0.3)
            - fx.chest_tube_effusion * eff * has_tube
            + n[EF]
        )
        if on_abx and infected:  # antibiotics clear an infection, not a sterile opacity
            s[CO] += -fx.antibiotic_consolidation * eff * min(1.0, (h - abx_since) / 12 + 0.3) + n[CO]
        else:
            s[CO] += (0.008 if infected and s[CO] > 0.1 else -0.004) + n[CO]
        if is_intub and not infected and uh[8] < 0.004:  # ventilator-associated pneumonia
            infected, s[CO] = True, s[CO] + 0.4
        s[PX] += -fx.chest_tube_pneumothorax * eff * has_tube - 0.004 + 0.5 * n[PX]
        s[AT] += 0.012 * is_intub + 0.004 * s[EF] - 0.008 * s[AT] + n[AT]
        s[CM] += 0.1 * n[CM]
        s[SD] = max(0.95 * is_intub, 0.85 * has_tube, 0.7 * has_line, 0.02)
        s = [min(1.0, max(0.0, x)) for x in s]
    state[hours] = s
    intub[hours], tube[hours], diur[hours], abx[hours] = is_intub, has_tube, 0.0, on_abx
    line[hours] = has_line
    return Course(hours, state, intub, tube, diur, abx, line, infected, organism, abx_course, log)


# ----------------------------------------------------------------------------- observations of the state


def vital_values(
    kind: str, st: np.ndarray, intub: np.ndarray, on_abx: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Chart values for one vital sign at the states `st` (n, 7); rounded as charted."""
    n = len(st)
    resp = respiratory_load(st)
    e = rng.standard_normal(n)
    if kind == "hr":
        return np.round(76 + 22 * st[:, CO] + 10 * resp + 6 * e)
    if kind == "rr":
        return np.round(np.where(intub, 16 + 4 * resp, 14 + 12 * resp) + 2 * e)
    if kind == "spo2":
        return np.round(np.clip(97.5 - 9 * resp + 3 * intub + 1.2 * e, 70, 100))
    if kind == "temp":
        return np.round(36.8 + 1.6 * st[:, CO] * (1 - 0.5 * on_abx) + 0.25 * e, 1)
    if kind == "nbps":
        return np.round(128 - 18 * st[:, CO] + 10 * e)
    if kind == "fio2":
        return np.round(np.clip(35 + 40 * resp + 5 * e, 21, 100))
    if kind == "cvp":  # filling pressure: rises with pulmonary oedema (fluid overload), falls after diuresis
        return np.round(np.clip(5 + 12 * st[:, ED] + 2 * st[:, EF] + 3 * intub + 1.5 * e, 0, 30))
    raise KeyError(kind)


def lung_sounds(zone: str, st: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Auscultation at the states `st` (n, 7) as a nurse charts it: 'Clear', 'Crackles', 'Diminished', ...

    The bases go dull over fluid or collapsed lung and crackle with oedema or pneumonia; the apex (where the air
    of a pneumothorax collects) goes silent. Another event that follows the findings without a lab.
    """
    u = rng.random((3, len(st)))
    out = np.full(len(st), "Clear", dtype=object)
    if zone == "base":
        dull = np.clip(1.2 * st[:, EF] + 1.6 * st[:, AT] - 0.25, 0, 0.95)
        crackle = np.clip(1.2 * st[:, ED] + 0.8 * st[:, CO] - 0.2, 0, 0.9)
        silent_label = "Diminished"
    elif zone == "apex":
        dull = np.clip(2.2 * st[:, PX] - 0.25, 0, 0.95)
        crackle = np.clip(0.9 * st[:, ED] + 0.6 * st[:, CO] - 0.25, 0, 0.9)
        silent_label = "Absent"
    else:
        raise KeyError(zone)
    out[u[2] < 0.05] = "Rhonchi"
    out[u[1] < crackle] = "Crackles"
    out[u[0] < dull] = silent_label
    return out


def lab_values(key: str, st: np.ndarray, intub: np.ndarray, diur: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lab results for item `key` at the states `st` (n, 7), rounded like the real lab."""
    n = len(st)
    resp = respiratory_load(st)
    e = rng.standard_normal(n)
    if key == "ph":
        return np.round(7.41 - 0.06 * resp + 0.03 * e, 2)
    if key == "po2":
        return np.round(np.clip(95 - 35 * resp + 20 * intub + 8 * e, 35, 400))
    if key == "pco2":
        return np.round(38 + 8 * resp + 4 * e)
    if key == "lactate":
        return np.round(np.clip(1.1 + 2.2 * st[:, CO] + 0.3 * e, 0.3, None), 1)
    if key == "base_excess":
        return np.round(-3 * st[:, CO] + 1.5 * e)
    if key == "crp":
        return np.round(np.clip(3 + 180 * st[:, CO] + 8 * e, 0.1, None), 1)
    if key == "wbc":
        return np.round(np.clip(7.5 + 11 * st[:, CO] + 1.5 * e, 0.5, None), 1)
    if key == "bnp":
        return np.round(np.clip(200 + 9000 * st[:, ED] * (0.5 + st[:, CM]) + 300 * e, 10, None))
    if key == "creatinine":
        return np.round(np.clip(1.0 + 0.4 * st[:, ED] + 0.15 * e, 0.3, None), 1)
    if key == "potassium":
        return np.round(np.clip(4.1 - 0.4 * diur + 0.3 * e, 2.0, None), 1)
    raise KeyError(key)
