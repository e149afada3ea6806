# Stage 2: tokenizer fitting (k-means with faiss, VQ-VAE, binning). Written in issue 3.
