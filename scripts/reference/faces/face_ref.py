"""Reference face counts with the course's detector: face_recognition's default HOG detector
(dlib frontal face detector, number_of_times_to_upsample=1).

Usage: face_ref.py OUT.csv DIR_OR_FILE...
Writes `path,count` rows in the same format as `face_eval count`: count >= 0 faces, -1 when the
image does not load (the course drops those from the denominator).
Setup (no dlib compile): pip install dlib-bin face_recognition_models numpy pillow
                         pip install --no-deps face_recognition
"""
import csv
import os
import sys

import face_recognition


def image_files(args):
    exts = (".png", ".jpg", ".jpeg")
    for a in args:
        if os.path.isdir(a):
            for root, _dirs, files in os.walk(a):
                for f in files:
                    if f.lower().endswith(exts):
                        yield os.path.join(root, f)
        else:
            yield a


def main():
    out, inputs = sys.argv[1], sys.argv[2:]
    paths = sorted(image_files(inputs))
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "count"])
        for p in paths:
            try:
                img = face_recognition.load_image_file(p)
            except Exception:
                w.writerow([p, -1])
                continue
            w.writerow([p, len(face_recognition.face_locations(img, number_of_times_to_upsample=1))])
    print(f"{len(paths)} images -> {out}")


if __name__ == "__main__":
    main()
