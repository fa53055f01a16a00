"""Launch backends: each decides where and how many processes start; all end in medscale.train.run."""
