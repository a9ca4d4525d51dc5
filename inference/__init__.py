"""Local inference, used by training (evaluation) and routing (serving) alike: prompt
rendering (`site_prompt`, `prompt_format`), answer constraints (`constraints`, `decoding`),
llama.cpp generation (`local_generate`), checked sampling, the local queue, the model server
and the models the router calls (`local_model`). Never imports the trainer or the router."""
