"""Reasoning: the TRIGO trigonometric-reduction gym with SymPy as the checker (Xiong et al., EMNLP 2023,
arXiv 2310.10180), a prover trained on it, and the formal statement sets FIMO (Liu et al., 2023, arXiv
2309.04295) and miniF2F with Hard-Mode answer discovery (Liu et al., ACL 2026, arXiv 2604.15839).

Lean cannot run here, so every Lean check is replaced by a stand-in that is named as such: SymPy trees and
exact arithmetic for the gym's closing check, substitution for the "prove" step of answer discovery."""
