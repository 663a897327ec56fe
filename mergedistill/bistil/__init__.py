"""BiStil (Ansell et al., Findings of ACL 2023): bilingual distillation of a multilingual teacher.

trim (vocabulary) -> phase 1 (general bilingual distillation into a layer-reduced copy of the teacher)
-> phase 2 (task distillation with Lottery-Ticket Sparse Fine-Tuning) -> zero-shot evaluation + report.
"""
