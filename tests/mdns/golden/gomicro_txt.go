// Command gomicro_txt writes and reads go-micro's mDNS TXT records with Go's own
// encoding/json, compress/zlib and encoding/hex, for the golden tests of
// microbroker-mdns. The record layout is go-micro's (registry/mdns_registry.go):
// hex(zlib(json.Marshal(mdnsTxt))) cut into 255-character strings.
//
//	go run gomicro_txt.go encode   < cases.jsonl    one {"service","version","metadata","endpoints"} a line
//	go run gomicro_txt.go decode   < records.jsonl  one {"strings": [...]} a line
//
// It uses the standard library only.
package main

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
)

// The wire types, field for field as go-micro declares them.
type Value struct {
	Name   string   `json:"name"`
	Type   string   `json:"type"`
	Values []*Value `json:"values"`
}

type Endpoint struct {
	Request  *Value            `json:"request"`
	Response *Value            `json:"response"`
	Metadata map[string]string `json:"metadata"`
	Name     string            `json:"name"`
}

type mdnsTxt struct {
	Metadata  map[string]string
	Service   string
	Version   string
	Endpoints []*Endpoint
}

type input struct {
	Service   string            `json:"service"`
	Version   string            `json:"version"`
	Metadata  map[string]string `json:"metadata"`
	Endpoints []*Endpoint       `json:"endpoints"`
	Strings   []string          `json:"strings"`
}

func encodeTxt(txt *mdnsTxt) ([]string, []byte, error) {
	b, err := json.Marshal(txt)
	if err != nil {
		return nil, nil, err
	}
	var buf bytes.Buffer
	w := zlib.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		return nil, nil, err
	}
	if err := w.Close(); err != nil {
		return nil, nil, err
	}
	encoded := hex.EncodeToString(buf.Bytes())
	var out []string
	for len(encoded) > 255 {
		out = append(out, encoded[:255])
		encoded = encoded[255:]
	}
	return append(out, encoded), b, nil
}

func decodeTxt(record []string) (*mdnsTxt, error) {
	raw, err := hex.DecodeString(strings.Join(record, ""))
	if err != nil {
		return nil, err
	}
	zr, err := zlib.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		return nil, err
	}
	var txt *mdnsTxt
	if err := json.Unmarshal(data, &txt); err != nil {
		return nil, err
	}
	return txt, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gomicro_txt encode|decode|version")
		os.Exit(2)
	}
	if os.Args[1] == "version" {
		fmt.Println(runtime.Version())
		return
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var line input
		if err := json.Unmarshal(in.Bytes(), &line); err != nil {
			fmt.Fprintln(os.Stderr, "bad input line:", err)
			os.Exit(1)
		}
		switch os.Args[1] {
		case "encode":
			record, js, err := encodeTxt(&mdnsTxt{
				Metadata: line.Metadata, Service: line.Service, Version: line.Version, Endpoints: line.Endpoints,
			})
			if err != nil {
				_ = out.Encode(map[string]string{"error": err.Error()})
				continue
			}
			_ = out.Encode(map[string]interface{}{"strings": record, "json": string(js)})
		case "decode":
			txt, err := decodeTxt(line.Strings)
			if err != nil {
				_ = out.Encode(map[string]string{"error": err.Error()})
				continue
			}
			js, _ := json.Marshal(txt)
			_ = out.Encode(map[string]interface{}{"json": string(js)})
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
