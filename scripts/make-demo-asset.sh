#!/usr/bin/env bash
# Regenerate assets/demo.wav, the bundled demo recording played by pcmcast.
#
# Deterministic: built only from espeak-ng (speech) and sox (tones, mixing,
# format conversion). No random sources, no dither (-D), repeatable mode (-R),
# so repeated runs on the same machine produce a bit-identical file.
#
# Output: RIFF WAV, PCM 16-bit signed, 48000 Hz, 2 channels, exactly 5.0 s
# (240000 frames), canonical 44-byte header (WAVE_FORMAT_PCM, not EXTENSIBLE).
#
# Usage: scripts/make-demo-asset.sh      (from any directory; installs
#        espeak-ng and sox with apt-get if missing, so run as root on Debian)
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd -- "${SCRIPT_DIR}/.." && pwd)"
OUT="${REPO_ROOT}/assets/demo.wav"

PHRASE="This is PCM cast. Live audio, to every listener."
RATE=48000
LENGTH=5            # seconds, exact
SPEECH_START=0.55   # seconds of lead-in before the voice starts

# --- dependencies -----------------------------------------------------------
source "${SCRIPT_DIR}/packages.sh"
need_packages espeak-ng sox

# --- work area --------------------------------------------------------------
TMP="$(mktemp -d)"
trap 'rm -rf -- "${TMP}"' EXIT

# All sox calls: repeatable mode, no automatic dither, warnings only.
# Intermediate files are 32-bit float so nothing is quantised before the end.
SOX=(sox -R -D -V2)
F32=(-e floating-point -b 32)

# --- 1. speech ----------------------------------------------------------------
# espeak-ng renders 22050 Hz mono; strip its leading/trailing silence, resample,
# centre it in the stereo field with a touch of room reverb, and place it.
espeak-ng -v en-us -s 160 -p 45 -w "${TMP}/speech_raw.wav" "${PHRASE}"
"${SOX[@]}" "${TMP}/speech_raw.wav" "${F32[@]}" -r "${RATE}" -c 2 "${TMP}/speech.wav" \
    silence 1 0.01 0.1% reverse silence 1 0.01 0.1% reverse \
    highpass 90 \
    rate -v "${RATE}" \
    channels 2 \
    reverb 22 50 60 \
    pad "${SPEECH_START}"

# --- 2. soft A-major pad ------------------------------------------------------
# Left: A3 + E4, right: C#4 + A4, with slow tremolo at slightly different rates
# so the chord gently moves between the speakers.
"${SOX[@]}" -n "${F32[@]}" -r "${RATE}" -c 1 "${TMP}/pad_l.wav" \
    synth "${LENGTH}" sine 220 sine mix 329.63 \
    tremolo 0.5 35 lowpass 1500 gain -6
"${SOX[@]}" -n "${F32[@]}" -r "${RATE}" -c 1 "${TMP}/pad_r.wav" \
    synth "${LENGTH}" sine 277.18 sine mix 440 \
    tremolo 0.7 35 lowpass 1500 gain -6
"${SOX[@]}" -M "${TMP}/pad_l.wav" "${TMP}/pad_r.wav" "${F32[@]}" "${TMP}/pad.wav" \
    fade h 1.2 "${LENGTH}" 1.2

# --- 3. bell arpeggio -----------------------------------------------------------
# A5, C#6, E6 struck in turn at the start, A6 after the voice finishes,
# alternating left/right; each a sine with a quieter inharmonic partial and a
# logarithmic (bell-like) decay.  Fields: start, Hz, left gain, right gain,
# decay length (the last one decays fully before the end of the loop).
bells=()
i=0
for spec in "0.10 880.00 0.85 0.25 1.60" \
            "0.45 1108.73 0.25 0.85 1.60" \
            "0.80 1318.51 0.75 0.40 1.60" \
            "4.25 1760.00 0.40 0.75 0.70"; do
    read -r at freq gl gr dur <<<"${spec}"
    partial="$(awk -v f="${freq}" 'BEGIN { printf "%.2f", f * 2.76 }')"
    "${SOX[@]}" -n "${F32[@]}" -r "${RATE}" -c 1 "${TMP}/bell_f_${i}.wav" \
        synth "${dur}" sine "${freq}" fade l 0.004 "${dur}" "$(awk -v d="${dur}" 'BEGIN { print d - 0.05 }')"
    "${SOX[@]}" -n "${F32[@]}" -r "${RATE}" -c 1 "${TMP}/bell_p_${i}.wav" \
        synth 0.5 sine "${partial}" fade l 0.002 0.5 0.48
    "${SOX[@]}" -m -v 0.80 "${TMP}/bell_f_${i}.wav" -v 0.15 "${TMP}/bell_p_${i}.wav" \
        "${F32[@]}" -c 2 "${TMP}/bell_${i}.wav" \
        remix "1v${gl}" "1v${gr}" \
        pad "${at}"
    bells+=("${TMP}/bell_${i}.wav")
    i=$((i + 1))
done
"${SOX[@]}" -m "${bells[@]}" "${F32[@]}" "${TMP}/bells.wav"   # -m scales each input by 1/N

# --- 4. mix, shape, normalise, write ------------------------------------------
# Voice in front, bells behind, pad quietest. sox -m pads shorter inputs with
# silence; pad.wav is exactly LENGTH long and the other tracks are shorter, so
# "trim 0 LENGTH" yields exactly LENGTH seconds. Short fades at both ends so
# the file loops seamlessly, then peak normalised to -3 dBFS.
mkdir -p "$(dirname -- "${OUT}")"
"${SOX[@]}" -m \
    -v 1.00 "${TMP}/speech.wav" \
    -v 0.45 "${TMP}/bells.wav" \
    -v 0.10 "${TMP}/pad.wav" \
    "${F32[@]}" "${TMP}/mix.wav" \
    trim 0 "${LENGTH}" \
    fade h 0.02 "${LENGTH}" 0.25
"${SOX[@]}" "${TMP}/mix.wav" -t wavpcm -e signed-integer -b 16 -r "${RATE}" -c 2 \
    "${TMP}/demo.wav" norm -3
cp -f -- "${TMP}/demo.wav" "${OUT}"

frames="$(soxi -s "${OUT}")"
if [[ "${frames}" != "$((RATE * LENGTH))" ]]; then
    echo "error: ${OUT} has ${frames} frames, expected $((RATE * LENGTH))" >&2
    exit 1
fi
echo "wrote ${OUT} (${frames} frames, $(stat -c %s "${OUT}") bytes)"
