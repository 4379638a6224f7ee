# Embeds gateway/ops/status_page.html in the binary: cmake -DIN=page.html -DOUT=page.c -P status_page.cmake
# writes a C file with the page's bytes (the page itself stays one readable HTML file).
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" nhex)
math(EXPR n "${nhex} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){16})" "\\1\n" bytes "${bytes}")
file(WRITE "${OUT}.tmp"
  "/* Generated from gateway/ops/status_page.html by gateway/ops/status_page.cmake: do not edit. */\n"
  "#include \"ops/status_page.h\"\n\n"
  "const unsigned char gw_status_page_html[] = {\n${bytes}\n};\n"
  "const size_t gw_status_page_html_len = ${n};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
