"""Book-style clinical captions (English and a short Chinese one) for what an image actually shows.

Captions are built from the rendered Recipe, not from the requested labels, so a count of "a few"
or a cup-to-disc ratio of 0.8 matches the pixels. A small grammar varies the wording.
"""

from __future__ import annotations

import numpy as np

from shards.synth.recipe import Recipe
from shards.synth.vocabulary import CUPPING, GLAUCOMA

Finding = tuple[str, str]  # (English phrase, Chinese phrase)

OPENERS = {
    "CFP": ("Colour fundus photograph of the {eye} eye", "Fundus photograph of the {eye} eye",
            "Colour fundus image of the {eye} eye", "Color fundus photography of the {eye} eye"),
    "FFA": ("Fundus fluorescein angiogram of the {eye} eye", "Fluorescein angiography of the {eye} eye, venous phase",
            "FFA of the {eye} eye in the late phase"),
    "OCT": ("OCT B-scan through the fovea of the {eye} eye", "Optical coherence tomography of the {eye} macula",
            "Horizontal OCT line scan of the {eye} eye"),
}
VERBS = ("showing", "demonstrating", "revealing", "with")
CONCLUSIONS = (", consistent with {}.", ", in keeping with {}.", "; the appearance suggests {}.", ". Diagnosis: {}.")
MODALITY_ZH = {"CFP": "彩色眼底照相", "FFA": "荧光素眼底血管造影", "OCT": "OCT"}
EYE_ZH = {"left": "左眼", "right": "右眼"}
DR_STAGES = (
    None,
    ("mild non-proliferative diabetic retinopathy", "轻度非增殖期糖尿病视网膜病变"),
    ("moderate non-proliferative diabetic retinopathy", "中度非增殖期糖尿病视网膜病变"),
    ("severe non-proliferative diabetic retinopathy", "重度非增殖期糖尿病视网膜病变"),
    ("proliferative diabetic retinopathy", "增殖期糖尿病视网膜病变"),
)


def _amount(n: int) -> Finding:
    if n < 5:
        return "a few", "少量"
    return ("scattered", "散在") if n < 15 else ("numerous", "大量")


def _cfp(r: Recipe) -> list[Finding]:
    out: list[Finding] = []
    if r.microaneurysms:
        en, zh = _amount(r.microaneurysms)
        out.append((f"{en} microaneurysms", f"{zh}微动脉瘤"))
    if r.dot_haemorrhages:
        en, zh = _amount(r.dot_haemorrhages)
        out.append((f"{en} dot and blot haemorrhages in the posterior pole", f"后极部{zh}点片状出血"))
    if r.flame_haemorrhages:
        out.append(("flame-shaped haemorrhages", "火焰状出血"))
    if r.preretinal_haemorrhage:
        out.append(("a boat-shaped preretinal haemorrhage", "舟状视网膜前出血"))
    if r.exudate_clusters:
        out.append(("hard exudates around the fovea" if r.macular_edema else "clusters of hard exudates", "硬性渗出"))
    if r.cotton_wool:
        out.append(("cotton-wool spots along the arcades", "棉绒斑"))
    if r.neovascular_tufts:
        out.append(("fronds of fine new vessels", "新生血管"))
    if r.macular_edema:
        out.append(("retinal thickening at the macula", "黄斑区视网膜增厚"))
    if r.drusen:
        size = "large soft" if r.drusen_scale > 1.4 else "small hard"
        en, zh = _amount(r.drusen)
        out.append((f"{en} {size} drusen at the macula", f"黄斑区{zh}玻璃膜疣"))
    if r.amd:
        out.append(("macular pigmentary changes", "黄斑区色素紊乱"))
    if r.geographic_atrophy:
        out.append(("a well-demarcated area of geographic atrophy", "地图样萎缩"))
    if r.cnv:
        out.append(("a grey-green subretinal lesion with surrounding haemorrhage", "黄斑区灰绿色病灶伴出血"))
    if r.glaucoma:
        out.append((f"an enlarged optic cup (cup-to-disc ratio about {r.cup_disc:.1f})",
                    f"视杯扩大（杯盘比约{r.cup_disc:.1f}）"))
    if r.peripapillary_atrophy:
        out.append(("peripapillary atrophy", "视盘旁萎缩"))
    return out


def _ffa(r: Recipe) -> list[Finding]:
    out: list[Finding] = []
    if r.microaneurysms:
        en, zh = _amount(r.microaneurysms * 3 // 2)
        out.append((f"{en} hyperfluorescent microaneurysms", f"{zh}微动脉瘤强荧光"))
    if r.dot_haemorrhages or r.flame_haemorrhages or r.cotton_wool:
        out.append(("blocked fluorescence from haemorrhages and cotton-wool spots", "出血及棉绒斑遮蔽荧光"))
    if r.nonperfusion:
        out.append(("areas of capillary non-perfusion", "毛细血管无灌注区"))
    if r.leaks:
        out.append(("focal leakage", "局灶性荧光渗漏"))
    if r.neovascular_tufts:
        out.append(("profuse leakage from new vessels", "新生血管荧光渗漏"))
    if r.macular_edema:
        out.append(("petaloid leakage at the macula", "黄斑区花瓣状荧光积存"))
    if r.drusen:
        out.append(("staining drusen", "玻璃膜疣着染"))
    if r.cnv:
        out.append(("a leaking choroidal neovascular membrane", "脉络膜新生血管渗漏"))
    if r.geographic_atrophy:
        out.append(("a window defect at the fovea", "黄斑区窗样缺损"))
    if r.glaucoma:
        out.append((f"a large optic cup (cup-to-disc ratio about {r.cup_disc:.1f})", f"视杯扩大（杯盘比约{r.cup_disc:.1f}）"))
    return out


def _oct(r: Recipe) -> list[Finding]:
    out: list[Finding] = []
    if r.macular_edema:
        out.append(("intraretinal cystoid spaces with increased central thickness", "黄斑囊样水肿"))
    if r.subretinal_fluid or r.cnv:
        out.append(("subretinal fluid", "视网膜下积液"))
    if r.exudate_clusters or r.dr_grade >= 2:
        out.append(("hyperreflective foci in the inner retina", "内层视网膜高反射点"))
    if r.drusen:
        out.append(("drusenoid elevations of the retinal pigment epithelium", "RPE玻璃膜疣样隆起"))
    if r.cnv:
        out.append(("subretinal hyperreflective material", "视网膜下高反射物质"))
    if r.geographic_atrophy:
        out.append(("loss of the RPE with choroidal hypertransmission", "RPE缺失伴脉络膜高透射"))
    if r.glaucoma:
        out.append(("thinning of the retinal nerve fibre layer", "视网膜神经纤维层变薄"))
    return out


NORMAL = {
    "CFP": ("a healthy optic disc (cup-to-disc ratio about {cdr:.1f}), normal vessels and a normal macula",
            "视盘界清色正（杯盘比约{cdr:.1f}）、血管及黄斑未见异常"),
    "FFA": ("normal filling of the retinal vessels and an intact foveal avascular zone", "视网膜血管充盈正常，未见异常荧光"),
    "OCT": ("a normal foveal contour and intact retinal layers", "黄斑中心凹形态正常，各层结构完整"),
}
FINDINGS = {"CFP": _cfp, "FFA": _ffa, "OCT": _oct}


def _diagnosis(r: Recipe) -> Finding | None:
    parts: list[Finding] = []
    if r.dr_grade:
        parts.append(DR_STAGES[r.dr_grade])
    elif r.red_lesions or r.neovascular_tufts:
        parts.append(("diabetic retinopathy", "糖尿病视网膜病变"))
    if r.macular_edema:
        parts.append(("macular edema", "黄斑水肿"))
    if r.amd:
        kind = "neovascular" if r.cnv else "atrophic" if r.geographic_atrophy else "dry"
        parts.append((f"{kind} age-related macular degeneration", "年龄相关性黄斑变性"))
    elif r.drusen:
        parts.append(("macular drusen", "黄斑玻璃膜疣"))
    if GLAUCOMA in r.found:
        parts.append(("glaucomatous optic neuropathy", "青光眼"))
    elif CUPPING in r.found:
        parts.append(("an increased cup-to-disc ratio, glaucoma suspect", "杯盘比增大，可疑青光眼"))
    if not parts:
        return None
    return " and ".join(en for en, _ in parts), "、".join(zh for _, zh in parts)


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def write_caption(r: Recipe, modality: str, eye: str, rng: np.random.Generator,
                  same_as: str | None = None) -> tuple[str, str]:
    """(English caption, Chinese caption); `same_as` is a figure label such as '1-1A'."""
    found = FINDINGS[modality](r) or [tuple(s.format(cdr=r.cup_disc) for s in NORMAL[modality])]
    opener = str(rng.choice(OPENERS[modality])).format(eye=eye)
    en = f"{opener} {rng.choice(VERBS)} {_join([p for p, _ in found])}"
    zh = f"{EYE_ZH[eye]}{MODALITY_ZH[modality]}示{'、'.join(z for _, z in found)}"
    diagnosis = _diagnosis(r)
    if diagnosis:
        en += str(rng.choice(CONCLUSIONS)).format(diagnosis[0])
        zh += f"，符合{diagnosis[1]}。"
    else:
        en += "."
        zh += "。"
    if same_as:
        en += f" Same person as Figure {same_as}."
        zh += f"与图{same_as}为同一患者。"
    return en, zh
