"""Patient-id presets for layouts users download. Pass the preset name wherever a pattern is taken."""

PRESETS = {
    # Kermany chest X-ray: person1234_bacteria_5678.jpeg -> 1234. NORMAL files (IM-0115-0001.jpeg,
    # NORMAL2-IM-0123-0001.jpeg) carry a study id that is taken as the patient; the two NORMAL
    # series number their studies independently, so each keeps its own group name as a prefix.
    "kermany": r"person(?P<patient>\d+)_|^NORMAL2-IM-(?P<normal2>\d+)-|^IM-(?P<im>\d+)-",
    # C-NMC 2019 leukemia: UID_12_3_4_all.bmp and UID_H12_3_4_hem.bmp -> 12 / H12.
    "cnmc": r"UID_(?P<patient>H?\d+)_",
}
