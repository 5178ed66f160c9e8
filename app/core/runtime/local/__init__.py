"""Local models: one worker OS process per loaded model, running llama.cpp through llama-cpp-python."""
