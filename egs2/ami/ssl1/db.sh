# Corpus locations for the AMI BiRQ recipe.
# AMI: directory that holds (or will receive) wav_db/<meeting>/audio/*.wav (lhotse's layout;
# amicorpus/ works too), ami_public_manual_1.6.2.zip and annotations/. Override by exporting AMI.
AMI="${AMI:-downloads/ami}"
