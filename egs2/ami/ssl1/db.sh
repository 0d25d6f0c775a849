# Corpus locations for the AMI BiRQ recipe.
# AMI: directory that holds (or will receive) amicorpus/<meeting>/audio/*.wav,
# ami_public_manual_1.6.2.zip and annotations/. Override by exporting AMI.
AMI="${AMI:-downloads/ami}"
