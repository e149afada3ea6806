# Stage 3: self-supervised pretraining (MPM, next-token, PolarBERT). Written in issue 4.
