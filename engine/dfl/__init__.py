"""DeepFaceLab model interoperability: its weight/state files <-> our workdirs (engine.import_dfl,
engine.export). `names` maps parameters to DFL's files and keys, `weights` reads and converts the
files, `options` maps DFL's options to our config, `model_io` ties them to checkpoints."""
