# Corpus locations for the YODAS BiRQ recipe.
# YODAS: local copy of the Hugging Face dataset espnet/yodas (v1 layout:
# data/<subset>/{audio,text,duration}/); extracted shards go to
# ${YODAS}/extracted unless --extract_dir is given. Override by exporting YODAS.
YODAS="${YODAS:-downloads/yodas}"
