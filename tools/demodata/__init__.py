"""Demo data from locally installable Debian packages: real music under synthetic, recorded
and sung voices, at 44.1 kHz. A tool beside the library (the library never imports it).

    python -m tools.demodata --out demo-data --seed 0      # what `make demo-data` runs

Writes
  ``OUT/musdb/<split>/<track>/{mixture,vocals,accompaniment}.wav`` (44.1 kHz stereo, PCM_16,
  mixture = vocals + accompaniment sample for sample: the integer sum of the quantised stems)
  and ``OUT/musdb/<split>/metadata.json`` (music file, offset, level, filters, every utterance);
  ``OUT/wsj0-2mix/{tr,cv,tt}/{mix,s1,s2}/*.wav`` (8 kHz mono, "min" lengths);
  ``OUT/LICENSES.md`` (the packages used, their versions and copyright files).

Splits (``tracks.SONG_SPLITS``)
  ``train`` (20 s tracks) and ``valid`` mix three vocal kinds: synthetic speech, recorded
  speech, sung phrases; 4 % of training tracks are instrumentals and 4 % a cappella.
  Held out (45 s tracks, longer than a separation segment): ``test-synthetic`` (espeak-ng
  accents and variants and a flite voice never used in training), ``test-real`` (recorded
  clips never heard in training: two whole speakers plus a hash share of the other clips),
  ``test-sung`` (another choir preset, other registers, other melodies), and the solos
  ``solo-instrumental``, ``solo-synthetic``, ``solo-real``, ``solo-sung`` (one source silent).
  Music, texts and recorded clips are split by a fixed hash of their names, whatever the seed;
  a valid or held-out file, text or clip whose content (a clip's decoded samples) is also in an
  earlier split is left out, as are texts inside or around an earlier split's text (letters
  compared) and music that repeats long stretches of a training file (``material.SAME_MUSIC``).
  ``--train-kinds`` re-weights the vocal kinds of ``train`` (e.g. ``sung=0.5,speech=0.25,
  recorded=0.25``); ``--formant-share`` gives that share of the training sung phrases and
  recorded clips other formants (``dsp.formant_warp``: the spectral envelope warped by
  0.8-1.25, separately below and above 1 kHz, gliding every 0.3-1.2 s; the pitch kept), so a
  few presets and speakers stand for many vowels and vocal tracts. Held-out and validation
  material is never warped; both options at their defaults leave older data bit for bit.

Material (``packages.PACKAGES`` is the one list; ``make demo-data`` installs it)
  Accompaniment: the music of warzone2100-music, wesnoth-1.16-music, supertux-data,
  lincity-ng-data, xmoto-data, widelands-data, megaglest-data, extremetuxracer-data.
  Synthetic voices (``speech``): espeak-ng (accents en-us, en-gb, en-029, en-gb-x-rp × 67
  variants), flite (kal16, awb, slt), festival (kal diphone, slt HTS), reading ``fortunes``;
  sung-like: festival's singing mode (kal) and espeak-ng SSML melodies with vibrato.
  Recorded speech (``material``): the voice folders of warzone2100-data's base.wz.
  Sung vowels (``singing``): fluid-soundfont-gm's choir/voice presets rendered by fluidsynth
  from generated melodies (1-3 lines, registers, swells, vibrato).

Band limits (measured; the highest band within 60 dB of the loudest)
  recorded clips 5.5 kHz (11.025 kHz files), flite and festival kal 8 kHz, espeak-ng 11 kHz,
  festival slt HTS 16 kHz; the choir renders and most music reach 15-20 kHz. So that "energy
  above a voice's band edge is accompaniment" is no free cue: (1) ``--lowpass-share`` (35 %)
  of tracks get their accompaniment low-passed at a log-uniform 5-16 kHz; (2) ``--bwe-share``
  (50 %) of band-limited pieces get a synthetic high band 20-32 dB below them, co-modulated
  with the voice: harmonics of a memoryless non-linearity plus (0-70 % of it) noise under
  the envelope of the voice's top octave, as sibilants and breath are.

Music is decoded with soundfile (libsndfile >= 1.0.29 reads Opus and Vorbis), falling back to
``ffmpeg`` (once, into ``OUT/.cache/music``). Utterances and sung phrases are cached
(``OUT/.cache/utterances``; ``--cache DIR`` keeps both inside DIR, the music in DIR/music) and
a split whose options did not change is skipped, so a rerun takes seconds; a finished split
built with other options is replaced only with ``--force``, and a folder the tool did not
make is never touched.
"""
