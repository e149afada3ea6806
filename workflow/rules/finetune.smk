# Stage 4-5: fine-tuning grid, evaluation, report, embedding search. Written in issue 5.
