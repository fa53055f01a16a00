"""The judge of open answers (`medscale judge`): a rubric in Chinese and English (seed 004's four criteria plus
safety), the pairwise protocol in both orders, single-answer scores, calibration on labelled pairs, and the job that
runs them. Not eval's verdict, which compares benchmark scores (medscale.eval.verdict)."""
