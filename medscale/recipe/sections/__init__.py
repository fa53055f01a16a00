"""The recipe's sections, one module per domain: model, adapter, data, train, dist, track, eval, generation.

Each holds its fields (HF names, each with the description `medscale recipe schema` shows) and the checks that
need only that section; checks across sections are the Recipe's (`medscale.recipe.schema`)."""
