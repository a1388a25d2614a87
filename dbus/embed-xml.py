#!/usr/bin/env python3
# Turns the interface XML into a C header with one string constant.
import sys

src, dst, name = sys.argv[1], sys.argv[2], sys.argv[3]
with open(src, encoding='utf-8') as f:
    text = f.read()
with open(dst, 'w', encoding='utf-8') as out:
    out.write('/* generated from %s; do not edit */\n#pragma once\n' % src.split('/')[-1])
    out.write('static const char %s[] =\n' % name)
    for line in text.splitlines(True):
        esc = line.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')
        out.write('    "%s"\n' % esc)
    out.write(';\n')
