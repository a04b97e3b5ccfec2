/* The Qwen3 tokenizer files, embedded so that gen-model writes complete model
 * folders offline. The paths come from meson. */
	.section .rodata
	.balign 64
	.global tandem_asset_tokenizer_json
	.global tandem_asset_tokenizer_json_end
tandem_asset_tokenizer_json:
	.incbin TANDEM_TOKENIZER_JSON
tandem_asset_tokenizer_json_end:
	.byte 0
	.balign 64
	.global tandem_asset_tokenizer_config_json
	.global tandem_asset_tokenizer_config_json_end
tandem_asset_tokenizer_config_json:
	.incbin TANDEM_TOKENIZER_CONFIG_JSON
tandem_asset_tokenizer_config_json_end:
	.byte 0
	.section .note.GNU-stack,"",@progbits
